"""The model can learn: on the bright-sphere toy task, p moves onto the sphere and sphere cases get shorter times."""

import pytest

from survival3d.config import ExperimentConfig, load_config
from survival3d.models.sanity import make_sphere_cases, run_sphere_sanity


def test_sphere_cases(rng):
    img, mask, time, event, has, expected = make_sphere_cases(6, 16, rng)
    assert img.shape == (6, 1, 16, 16, 16) and mask.shape == img.shape
    assert (mask.reshape(6, -1).any(1) == has).all()
    assert ((time >= 1) & (time <= 100)).all() and set(event.tolist()) <= {0, 1}
    assert (expected[has] < expected[~has].min()).all() if has.any() and (~has).any() else True


@pytest.mark.slow
def test_softmin_model_localises_sphere():
    cfg = load_config(None, [], schema=ExperimentConfig)  # the recommended defaults (patch 4, embed 48, depth 2)
    res = run_sphere_sanity(cfg, steps=50, size=16, n_train=64, n_val=32, batch=8, lr=1e-3, warmup=20,
                            eval_every=50, seed=0)["final"]
    assert res["p_mass_sphere"] > 3 * res["p_mass_chance"], res
    assert res["pred_sphere"] < res["pred_none"], res
