"""Fixtures of the engine tests: a tiny experiment config and the components (real modules when present)."""

import pytest

import engine_standins as standins
from survival3d.config import ExperimentConfig, load_config


@pytest.fixture
def components():
    return standins.components()


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*overrides, name="t"):
        base = [
            f"out_dir={tmp_path / 'runs'}", f"name={name}", "data.source=dummy", "data.dummy.level=1",
            "data.dummy.n=24", "data.dummy.size=16", "data.image_size=[16,16,16]", "data.batch_size=4",
            "data.val_frac=0.34", "train.epochs=2", "optim.warmup_epochs=0", *standins.TINY,
        ]
        return load_config(None, [*base, *overrides], schema=ExperimentConfig)

    return make
