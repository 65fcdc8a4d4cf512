"""model.covariate_aft end to end: on constant images with a log-normal AFT table of known coefficients, a run learns
the coefficients through the linear term alone (FiLM off) and writes them, per unit and per level, to
covariate_effects.csv; the table is the model's own weights mapped through the training split's encoder."""

import numpy as np
import pandas as pd
import pytest
import torch

from survival3d.config import ExperimentConfig, load_config
from survival3d.data.tabular import table_manifest
from survival3d.engine.checkpoint import load_trained
from survival3d.engine.experiment import run_experiment
from survival3d.engine.survival_task import covariate_effects

AGE_EFFECT = -0.03  # log-time per year
SMOKING = {"never": 0.0, "former": -0.3, "current": -0.6}  # log-time per level


def _table(rng, n):
    age = rng.normal(60.0, 8.0, n)
    smoking = rng.choice(list(SMOKING), n)
    log_t = np.log(40.0) + AGE_EFFECT * (age - 60.0) + np.array([SMOKING[s] for s in smoking]) + 0.05 * rng.standard_normal(n)
    return pd.DataFrame({"time": np.exp(log_t), "event": 1, "age": age, "smoking": smoking})


def test_covariate_aft_recovers_known_log_time_coefficients(tmp_path):
    torch.set_num_threads(1)
    rng = np.random.default_rng(int(np.random.SeedSequence().entropy % 2**32))  # fresh data every run
    manifest = table_manifest(_table(rng, 240), tmp_path / "table", covariates=["age", "smoking"])
    cfg = load_config(None, [
        "name=aft", f"out_dir={tmp_path / 'runs'}", "data.source=manifest", f"data.manifest={manifest}",
        "data.covariates.numeric=[age]", "data.covariates.categorical=[smoking]", "data.image_size=[8,8,8]",
        "data.augment=false", "data.batch_size=32", "data.val_frac=0.25", "model.patch_size=4", "model.window_size=2",
        "model.embed_dim=12", "model.num_heads=2", "model.film=false", "model.covariate_aft=true", "head.hidden=[8]",
        "loss.tmax=100", "optim.lr=3e-2", "optim.weight_decay=0", "train.epochs=30", "train.heatmap=false",
        "logging.wandb=false", "logging.progress=false",
    ], schema=ExperimentConfig)
    run_experiment(cfg)
    run = tmp_path / "runs" / "aft"
    table = pd.read_csv(run / "covariate_effects.csv")
    assert list(table.columns) == ["covariate", "term", "log_time_coef", "time_ratio"]
    # the file is the final model's weights through the training encoder
    trained = load_trained(run)
    again = covariate_effects(trained.model.covariate_shift, trained.covariate_encoder)
    np.testing.assert_allclose(again["log_time_coef"], table["log_time_coef"], rtol=1e-9)
    np.testing.assert_allclose(table["time_ratio"], np.exp(table["log_time_coef"]), rtol=1e-9)
    coef = {(r.covariate, r.term.split(" (")[0]): r.log_time_coef for r in table.itertuples()}
    sd = trained.covariate_encoder.std[0]
    assert coef[("age", "per sd")] == pytest.approx(coef[("age", "per unit")] * sd, rel=1e-9)
    # levels sort as current, former, never: each against "current"
    assert set(coef) == {("age", "per unit"), ("age", "per sd"), ("smoking", "former vs current"),
                         ("smoking", "never vs current")}
    # the generator's coefficients, within what 180 noisy cases and a constant image leave to learn
    assert coef[("age", "per unit")] == pytest.approx(AGE_EFFECT, abs=0.006)
    assert coef[("smoking", "former vs current")] == pytest.approx(SMOKING["former"] - SMOKING["current"], abs=0.08)
    assert coef[("smoking", "never vs current")] == pytest.approx(SMOKING["never"] - SMOKING["current"], abs=0.08)
