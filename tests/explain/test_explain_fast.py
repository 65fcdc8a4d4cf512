"""explain on a CPU: batched shift averaging, the coarse occlusion default, no warning spam, a time estimate."""

import itertools
import logging
import warnings

import torch
import torch.nn.functional as F
from evalx_standin import TinySurvivalModel, sphere_case

from survival3d.explain import EXPLAINERS, cubelets_to_image
from survival3d.explain.head import HeadMap, grid_offsets
from survival3d.explain.occlusion import Occlusion


def _two_cases():
    b = sphere_case(size=16)
    for k in ("image", "mask", "lung_mask"):
        b[k] = torch.cat([b[k], b[k].flip(2)])
    b["cov_num"] = torch.randn(2, 2)
    return b


def _shift_average_one_pass_per_shift(model, batch, ps=4, shifts=4):
    """The reference: one forward pass per grid shift over the whole batch, as before batching."""
    image, lung = batch["image"].float(), batch["lung_mask"].float()
    shape = image.shape[2:]
    total = torch.zeros(image.shape[0], 1, *shape)
    offsets = list(itertools.product(grid_offsets(ps, shifts), repeat=3))
    for s in offsets:
        pad = (s[2], ps - s[2], s[1], ps - s[1], s[0], ps - s[0])
        x = F.pad(image, pad, mode="replicate")
        out = model(x, cov_num=batch["cov_num"], cov_cat=None, lung_mask=F.pad(lung, pad, mode="replicate"))
        p = torch.where(out.valid.bool(), out.p.float(), torch.zeros_like(out.p.float()))
        heat = cubelets_to_image(p, x.shape[2:], ps, "nearest")
        total += heat[..., s[0]: s[0] + shape[0], s[1]: s[1] + shape[1], s[2]: s[2] + shape[2]]
    return total / len(offsets)


def test_batched_shift_averaging_equals_one_pass_per_shift():
    torch.manual_seed(int(torch.randint(0, 1 << 30, ())))
    model = TinySurvivalModel().eval()
    batch = _two_cases()
    with torch.no_grad():
        ref = _shift_average_one_pass_per_shift(model, batch)
    for chunk in (1, 7, 64):
        got = HeadMap(which="p", chunk=chunk)(model, batch)
        assert torch.allclose(got, ref, atol=1e-6), (chunk, float((got - ref).abs().max()))


def test_coarse_occlusion_is_the_non_overlapping_box_and_silent():
    model = TinySurvivalModel().eval()
    batch = sphere_case(size=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        coarse = EXPLAINERS.build("occlusion_coarse")(model, batch)
    assert not [w for w in caught if issubclass(w.category, UserWarning)], [str(w.message) for w in caught]
    ref = Occlusion(mask_size=8, overlap=0.0)(model, batch)
    assert torch.equal(coarse, ref)


def test_default_methods_are_the_fast_ones():
    from survival3d.cli.explain import DEFAULT_METHODS, parse_methods

    methods = parse_methods(DEFAULT_METHODS)
    assert methods == ["head", "head_grid", "gradcam", "occlusion_coarse"]
    assert not {"polycam", "gradcampp", "occlusion"} & set(methods)


def test_the_expected_time_is_logged_after_the_first_case(tmp_path, caplog):
    from survival3d.explain.pipeline import Case, explain_cases

    model = TinySurvivalModel().eval()
    cases = [Case(id=f"c{i}", batch=sphere_case(size=16)) for i in range(3)]
    with caplog.at_level(logging.INFO, logger="survival3d.explain.pipeline"):
        explain_cases(model, cases, ["head_grid", "gradcam"], tmp_path, views=False, progress=False, total=3)
    lines = [r.getMessage() for r in caplog.records if "first case took" in r.getMessage()]
    assert len(lines) == 1 and "for all 3 cases" in lines[0] and "gradcam" in lines[0] and "head_grid" in lines[0]
