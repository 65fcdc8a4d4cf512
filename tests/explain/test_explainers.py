"""Every registered explainer on a tiny stand-in model; CAM weights against pytorch-grad-cam; alignment."""

import numpy as np
import pytest
import torch
from evalx_standin import TinySurvivalModel, sphere_case

from survival3d.errors import ConfigError
from survival3d.explain import EXPLAINERS, Unsupported, cubelets_to_image, localisation_metrics
from survival3d.explain.cam import gradcam_weights, gradcampp_weights
from survival3d.explain.head import grid_offsets

FAST = {"occlusion": {"mask_size": 8, "overlap": 0.0}}  # 8 occlusions instead of 27 on 16^3


@pytest.fixture(scope="module")
def model():
    return TinySurvivalModel()


@pytest.mark.parametrize("name", EXPLAINERS.keys())
def test_every_explainer_returns_a_finite_aligned_map(name, model):
    batch = sphere_case(size=16)
    batch["image"] = torch.cat([batch["image"], batch["image"].flip(2)])  # B = 2, different cases
    for k in ("mask", "lung_mask"):
        batch[k] = torch.cat([batch[k], batch[k].flip(2)])
    batch["cov_num"] = torch.randn(2, 2)
    explainer = EXPLAINERS.build({"name": name, **FAST.get(name, {})})
    h = explainer(model, batch)
    channels = 3 if explainer.kind == "rgb" else 1
    assert h.shape == (2, channels, 16, 16, 16) and torch.isfinite(h).all()
    assert h.abs().sum() > 0
    if explainer.kind == "rgb":
        assert h.min() >= 0 and h.max() <= 1


@pytest.mark.parametrize("name", ["head", "head_loc", "gradcam", "gradcampp_embed", "polycam"])
def test_heatmap_lands_on_the_bright_sphere(name, model, rng):
    # the stand-in gives bright cubelets the shortest survival: a well-aligned map must point at the sphere
    # sphere centred within 0.5 voxel of a cubelet centre, so the hottest cubelet's centre lies inside it
    centre = tuple(4 * rng.integers(1, 3, 3) + 1.5 + rng.uniform(-0.5, 0.5, 3))
    b = sphere_case(size=16, centre=centre)
    h = EXPLAINERS.build(name)(model, b)[0, 0].numpy()
    m = localisation_metrics(h, b["mask"][0, 0].numpy(), lung_mask=b["lung_mask"][0, 0].numpy(), patch_size=4)
    assert m["pointing_game"] == 1.0
    assert m["energy_pg_cubelet"] > 3 * m["chance_energy"]


def test_head_p_keeps_its_mass_and_zeroes_invalid_cubelets(model):
    b = sphere_case(size=16)
    b["lung_mask"] = torch.zeros_like(b["lung_mask"])
    b["lung_mask"][..., :8] = 1  # only half the cubelets are valid
    h = EXPLAINERS.build("head_grid")(model, b)[0, 0]
    assert h[..., 8:].abs().sum() == 0
    assert float(h.sum()) == pytest.approx(4**3, rel=1e-4)  # p sums to 1; each cubelet fills 4^3 voxels


def test_grid_offsets():
    assert grid_offsets(4, 4) == [0, 1, 2, 3]
    assert grid_offsets(16, 4) == [0, 4, 8, 12]
    assert grid_offsets(2, 4) == [0, 1]
    assert grid_offsets(8, 1) == [0]
    with pytest.raises(ValueError):
        grid_offsets(4, 0)


def test_one_shift_is_the_grid_map(model):
    b = sphere_case(size=16)
    torch.testing.assert_close(EXPLAINERS.build({"name": "head", "shifts": 1})(model, b),
                               EXPLAINERS.build("head_grid")(model, b))


def test_shift_averaged_head_peaks_near_an_unaligned_sphere_centre(model, rng):
    """Anywhere relative to the cubelet grid, the shift-averaged p map peaks inside the sphere, near its centre,
    while the single-grid map can only point at the centre of whichever cubelet wins."""
    for _ in range(4):
        centre = rng.uniform(5.0, 11.0, 3)
        b = sphere_case(size=16, centre=tuple(centre))
        mask = b["mask"][0, 0].numpy()
        h = EXPLAINERS.build("head")(model, b)[0, 0].numpy()
        m = localisation_metrics(h, mask, patch_size=4)
        assert m["pointing_game"] == 1.0
        peak = np.array(np.unravel_index(h.argmax(), h.shape))
        assert np.linalg.norm(peak - centre) <= 2.0


def test_cubelets_to_image_nearest_is_block_aligned_and_crops_padding():
    x = torch.zeros(1, 1, 3, 3, 3)
    x[0, 0, 2, 1, 0] = 1.0
    up = cubelets_to_image(x, (10, 12, 9), 4, "nearest")
    assert up.shape == (1, 1, 10, 12, 9)
    nz = up[0, 0].nonzero()
    assert nz[:, 0].min() == 8 and nz[:, 0].max() == 9  # cubelet 2 covers voxels 8..11, cropped to 8..9
    assert nz[:, 1].min() == 4 and nz[:, 1].max() == 7 and nz[:, 2].max() == 3
    smooth = cubelets_to_image(x, (12, 12, 12), 4, "trilinear")[0, 0]
    peak = np.unravel_index(int(smooth.argmax()), smooth.shape)
    assert 8 <= peak[0] <= 11 and 4 <= peak[1] <= 7 and 0 <= peak[2] <= 3
    with pytest.raises(ValueError, match="mode"):
        cubelets_to_image(x, (12, 12, 12), 4, "cubic")
    with pytest.raises(ValueError, match="cover"):
        cubelets_to_image(x, (13, 12, 12), 4)


def test_cam_weights_match_pytorch_grad_cam():
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    a = torch.rand(2, 5, 3, 4, 2) + 0.1
    g = torch.randn(2, 5, 3, 4, 2)
    ref = GradCAM.get_cam_weights(None, None, None, None, a.numpy(), g.numpy())
    np.testing.assert_allclose(gradcam_weights(a, g).numpy(), ref, rtol=1e-6, atol=1e-7)
    ref_pp = GradCAMPlusPlus.get_cam_weights(None, None, None, None, a.numpy(), g.numpy())
    np.testing.assert_allclose(gradcampp_weights(a, g).numpy(), ref_pp, rtol=1e-3, atol=1e-5)


def test_gradcam_matches_a_manual_autograd_computation(model):
    b = sphere_case(size=16)
    x = b["image"].clone().requires_grad_(True)
    out = model(x, cov_num=b["cov_num"], lung_mask=b["lung_mask"])
    a = out.features["embed"]
    (g,) = torch.autograd.grad(out.risk.sum(), a)
    cam = torch.relu((g.mean((2, 3, 4))[:, :, None, None, None] * a).sum(1, keepdim=True)).detach()
    expected = torch.nn.functional.interpolate(cam, size=(16, 16, 16), mode="trilinear", align_corners=False)
    got = EXPLAINERS.build("gradcam_embed")(model, b)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_registry_rejects_unknown_names_and_bad_arguments():
    with pytest.raises(ConfigError, match="gradcam"):
        EXPLAINERS.build("gradcamm")
    with pytest.raises(ValueError):
        EXPLAINERS.build({"name": "polycam", "chunk": 0})
    with pytest.raises(ValueError):
        EXPLAINERS.build({"name": "occlusion", "overlap": 1.0})
    with pytest.raises(ValueError, match="mode"):
        EXPLAINERS.build({"name": "head", "mode": "cubic"})
    with pytest.raises(ValueError, match="variant"):
        EXPLAINERS.build({"name": "polycam", "variant": "plusminus"})
    with pytest.raises(ValueError, match="which"):
        EXPLAINERS.build({"name": "head", "which": "q"})


def test_missing_feature_is_a_clear_error(model):
    with pytest.raises(ValueError, match="lack"):
        EXPLAINERS.build({"name": "polycam", "layers": ["nope"]})(model, sphere_case(size=16))


def test_pipeline_skips_a_method_the_model_cannot_support(model, tmp_path, caplog):
    from survival3d.explain.pipeline import Case, explain_cases

    class NoHead(torch.nn.Module):  # a meanpool-style head: no p / loc maps
        def __init__(self):
            super().__init__()
            self.inner = model
            self.patch_size = model.patch_size

        def forward(self, image, **kw):
            out = self.inner(image, **kw)
            out.p = out.loc = None
            return out

    table = explain_cases(NoHead(), [Case("a", sphere_case(size=16))], ["head", "gradcam"], tmp_path, views=False,
                          progress=False)
    assert list(table["method"]) == ["gradcam"] and "skipping explainer 'head'" in caplog.text
    with pytest.raises(Unsupported):
        EXPLAINERS.build("head")(NoHead(), sphere_case(size=16))
