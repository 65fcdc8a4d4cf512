"""The training-time heatmap callback writes what engine/heatmap.py's write_heatmap wrote."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
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


def test_heatmap_callback_matches_engine_heatmap(tmp_path):
    from survival3d.engine.heatmap import write_heatmap

    torch.manual_seed(0)
    model = TinySurvivalModel(patch_size=4)
    ds = [_case(i) for i in range(4)]
    info = HeatmapCallback().on_fit_end(tmp_path / "new", model, ds, torch.device("cpu"), False)
    ref = write_heatmap(model, ds, tmp_path / "old" / "heatmap", torch.device("cpu"))
    assert info is not None and ref is not None
    assert info["p_on_lesion"] == ref["p_on_lesion"] and info["id"] == ref["id"]
    assert info["lesion_cubelet_frac"] == ref["lesion_cubelet_frac"]
    for key in ("png", "nifti", "image"):
        assert Path(info[key]).name == Path(ref[key]).name and Path(info[key]).is_file()
        assert Path(info[key]).parent == tmp_path / "new" / "heatmap"
    for key in ("nifti", "image"):
        a, b = nib.load(info[key]), nib.load(ref[key])
        np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
        assert a.header == b.header
    assert json.loads((tmp_path / "new" / "heatmap" / "heatmap.json").read_text()) == info


def test_heatmap_callback_skips_without_lesion_or_p(tmp_path):
    model = TinySurvivalModel(patch_size=4)
    no_mask = [{k: v for k, v in _case(0).items() if k != "mask"}]
    assert HeatmapCallback().on_fit_end(tmp_path, model, no_mask, torch.device("cpu"), False) is None

    class NoP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, image, **kw):
            out = self.inner(image, **kw)
            out.p = None
            return out

    assert HeatmapCallback().on_fit_end(tmp_path, NoP(), [_case(1)], torch.device("cpu"), False) is None
    assert not (tmp_path / "heatmap").exists()
