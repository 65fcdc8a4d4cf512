"""A ``torch.compile``d survival model gives the same outputs as the eager one.

Tolerance (fp32 on CPU, from :data:`survival3d.bench.checks.TOLERANCES`): |compiled − eager| ≤ 1e-5·max|eager| +
1e-4·|eager| elementwise, for the prediction, risk, localisation weights p, per-cubelet locs and the heatmap.
Compiling the full default model with inductor on 2 CPU cores takes over a minute, so a tiny config (one block,
16 channels) is compiled; the code path is the same.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from survival3d.bench.checks import TOLERANCES, compare_compiled
from survival3d.bench.contenders import BENCH_MODELS

TINY_MODEL = ["model.depth=1", "model.embed_dim=16", "model.num_heads=2"]


def _inductor_available() -> bool:
    return shutil.which("gcc") is not None or shutil.which("cc") is not None or shutil.which("clang") is not None


@pytest.mark.skipif(not _inductor_available(), reason="inductor's CPU backend needs a C++ compiler (gcc/clang)")
@pytest.mark.slow
def test_compiled_model_matches_eager_on_cpu(survival_builders):
    c = BENCH_MODELS.get("survival3d")(size=16, batch=2, device=torch.device("cpu"), overrides=TINY_MODEL)
    result = compare_compiled(c, amp=False, backend="inductor")
    rtol, atol_rel = TOLERANCES["fp32"]
    assert result["precision"] == "fp32" and result["tolerance"] == {"rtol": rtol, "atol_rel": atol_rel}
    assert {"pred", "risk"} <= set(result["outputs"])
    for name, r in result["outputs"].items():
        assert r["ok"], (name, r)
    assert result["ok"]
    assert c.net is c.module  # the contender is left on its eager module
