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
    cfg = load_config(None, ["model.embed_dim=24", "model.num_heads=2", "model.window_size=2", "model.patch_size=4",
                             "head.hidden=[32]"], schema=ExperimentConfig)
    res = run_sphere_sanity(cfg, steps=40, size=16, n_train=32, n_val=16, batch=8, lr=1e-3, warmup=5,
                            eval_every=40, seed=1)["final"]
    assert res["p_mass_sphere"] > 3 * res["p_mass_chance"], res
    assert res["pred_sphere"] < res["pred_none"], res
