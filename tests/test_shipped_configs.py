"""Every shipped survival config (configs/*.yaml) loads against the schema, passes the training checks, names a dummy level whose size it
supports, and builds a model that runs forward on a volume of the config's image size."""

from pathlib import Path

import pytest
import torch

from survival3d.config import ExperimentConfig, load_config
from survival3d.data.dummy import get_level
from survival3d.build import build_survival_model
from survival3d.contracts import CovariateSpec
from survival3d.engine.survival_task import check_train_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_found():
    names = {p.stem for p in CONFIGS}
    assert {f"dummy{i}" for i in range(1, 7)} <= names
    assert {f"dummy{i}_cpu" for i in (4, 5, 6)} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_and_runs(path):
    cfg = load_config(path, schema=ExperimentConfig)
    check_train_config(cfg)  # the train.* checks run_experiment makes first (e.g. the flip term's grid condition)
    if cfg.data.source == "dummy":
        level = get_level(cfg.data.dummy.level)
        assert cfg.data.dummy.size >= level.min_size
        assert list(cfg.data.image_size) == [cfg.data.dummy.size] * 3
    cats = [3] * len(cfg.data.covariates.categorical)
    spec = CovariateSpec(len(cfg.data.covariates.numeric), cats)
    model = build_survival_model(cfg, spec).eval()
    size = list(cfg.data.image_size or [32, 32, 32])
    num = torch.randn(1, spec.num_numeric) if spec.num_numeric else None
    cat = torch.zeros(1, len(cats), dtype=torch.long) if cats else None
    with torch.no_grad():
        out = model(torch.rand(1, cfg.model.in_channels, *size), num, cat)
    assert out.pred.shape == (1,) and torch.isfinite(out.pred).all()
    assert out.p is None or torch.allclose(out.p.sum(), torch.tensor(1.0))
