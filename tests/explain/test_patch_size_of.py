"""patch_size_of: the cell size of a map on the model's cubelet grid or on a finer grid (head.map_upsample)."""

import torch

from survival3d.explain.base import patch_size_of


def test_patch_size_of_cubelet_and_finer_grids():
    model = torch.nn.Module()
    model.patch_size = 4
    assert patch_size_of(model, (32, 32, 32), (8, 8, 8)) == 4
    assert patch_size_of(model, (30, 32, 28), (8, 8, 7)) == 4  # padded at the far end
    assert patch_size_of(model, (32, 32, 32), (16, 16, 16)) == 2  # a map twice as fine as the cubelets
    assert patch_size_of(torch.nn.Module(), (32, 32, 32), (16, 16, 16)) == 2


def test_head_explainers_render_a_map_finer_than_the_cubelets():
    """head.map_upsample=2: the single-pass and the shift-averaged head maps are on the image grid, each pass's p
    (mass 1) spread over its half-cubelets, so the single-pass map keeps mass 1 (summed over voxels / cell volume) and the shift average at most 1."""
    from survival3d.explain.base import EXPLAINERS
    from survival3d.models.survival_net import SurvivalNet3D

    torch.manual_seed(torch.seed() % 2**31)
    model = SurvivalNet3D(patch_size=4, embed_dim=12, depth=1, num_heads=2, window_size=2,
                          head={"name": "softmin", "hidden": [8], "map_upsample": 2}).eval()
    batch = {"image": torch.rand(1, 1, 16, 16, 16)}
    with torch.no_grad():
        out = model(batch["image"])
    assert out.p.shape[2:] == (8, 8, 8)
    single = EXPLAINERS.build("head_grid")(model, batch)
    shifted = EXPLAINERS.build({"name": "head", "shifts": 2})(model, batch)
    assert single.shape == shifted.shape == (1, 1, 16, 16, 16)
    torch.testing.assert_close(single.sum() / 8, torch.tensor(1.0), rtol=1e-5, atol=1e-6)  # 2^3 voxels per cell
    assert torch.isfinite(shifted).all() and 0.0 < float(shifted.sum() / 8) <= 1.0 + 1e-5  # cropping drops border mass
