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
