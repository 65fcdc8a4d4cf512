"""The training-time heatmap callback: the case it shows, p upsampled to voxels, the share of p on the lesion."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from survival3d.explain.callbacks import HeatmapCallback
from tests.explain.evalx_standin import TinySurvivalModel


def _case(i: int, size: int = 16, radius: float = 3.0) -> dict:
    rng = np.random.default_rng(i)
    centre = rng.uniform(radius + 1, size - radius - 1, 3)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), -1)
    mask = (np.linalg.norm(grid - centre, axis=-1) <= radius + i % 2).astype(np.float32)
    image = 0.2 + 0.6 * mask + 0.05 * rng.random((size,) * 3).astype(np.float32)
    return {"id": f"case{i}", "image": torch.as_tensor(image)[None], "mask": torch.as_tensor(mask)[None],
            "time": float(10 + i), "event": i % 2, "cov_num": torch.zeros(2), "cov_cat": torch.zeros(0, dtype=torch.long)}


def test_heatmap_callback_writes_p_and_lesion_share(tmp_path):
    torch.manual_seed(0)
    model = TinySurvivalModel(patch_size=4).eval()
    ds = [_case(i) for i in range(4)]
    info = HeatmapCallback().write(tmp_path, model, ds, torch.device("cpu"), False)
    assert info is not None
    # the case shown: the uncensored case with the largest lesion
    events = [c for c in ds if c["event"] == 1]
    shown = max(events, key=lambda c: float(c["mask"].sum()))
    assert info["id"] == shown["id"]
    with torch.no_grad():
        p = model(shown["image"][None], cov_num=shown["cov_num"][None]).p[0, 0]
    touched = torch.nn.functional.max_pool3d(shown["mask"][None], 4)[0, 0] > 0
    assert info["p_on_lesion"] == pytest.approx(float(p[touched].sum()), abs=1e-6)
    assert info["lesion_cubelet_frac"] == pytest.approx(float(touched.float().mean()), abs=1e-9)
    for key in ("png", "nifti", "image"):
        assert Path(info[key]).is_file() and Path(info[key]).parent == tmp_path / "heatmap"
    heat = nib.load(info["nifti"])
    assert heat.shape == (16, 16, 16)
    # p upsampled cubelet -> voxels: every voxel of a cubelet carries its p, so the volume sums to 4**3 * sum(p) = 64
    assert float(np.asanyarray(heat.dataobj).sum()) == pytest.approx(64.0, rel=1e-4)
    np.testing.assert_allclose(np.asanyarray(heat.dataobj)[:4, :4, :4], float(p[0, 0, 0]), rtol=1e-5)
    assert json.loads((tmp_path / "heatmap" / "heatmap.json").read_text()) == info


def test_heatmap_callback_skips_without_lesion_or_p(tmp_path):
    model = TinySurvivalModel(patch_size=4)
    no_mask = [{k: v for k, v in _case(0).items() if k != "mask"}]
    assert HeatmapCallback().write(tmp_path, model, no_mask, torch.device("cpu"), False) is None

    class NoP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, image, **kw):
            out = self.inner(image, **kw)
            out.p = None
            return out

    assert HeatmapCallback().write(tmp_path, NoP(), [_case(1)], torch.device("cpu"), False) is None
    assert not (tmp_path / "heatmap").exists()
