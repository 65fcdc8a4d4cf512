"""A real survival table (lifelines' GBSG2, in days) with constant images, trained in days and in months with the
default time settings (loss.tmax auto): the same model, predictions on the data's scale, the grid in the checkpoint."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from survival3d.config import ExperimentConfig, load_config
from survival3d.data.tabular import table_manifest
from survival3d.engine.checkpoint import load_trained
from survival3d.engine.experiment import run_experiment

NUMERIC = ["age", "tsize", "pnodes", "progrec", "estrec"]
CATEGORICAL = ["horTh", "menostat", "tgrade"]


def _train(df, tmp_path, unit, scale):
    manifest = table_manifest(df, tmp_path / unit, covariates=NUMERIC + CATEGORICAL, time_scale=scale)
    cfg = load_config(None, [
        f"name={unit}", f"out_dir={tmp_path / 'runs'}", "data.source=manifest", f"data.manifest={manifest}",
        f"data.time_unit={unit}", f"data.covariates.numeric={NUMERIC}", f"data.covariates.categorical={CATEGORICAL}",
        "data.image_size=[8,8,8]", "data.augment=false", "data.batch_size=32", "model.patch_size=4",
        "model.window_size=2", "model.embed_dim=24", "optim.lr=1e-3", "train.epochs=4", "train.heatmap=false",
        "logging.wandb=false", "logging.progress=false",
    ], schema=ExperimentConfig)
    run_experiment(cfg)
    run = tmp_path / "runs" / unit
    return run, pd.read_csv(run / "predictions.csv"), json.loads((run / "final_metrics.json").read_text())


def test_gbsg2_in_days_and_months(tmp_path):
    from lifelines.datasets import load_gbsg2

    torch.set_num_threads(1)
    df = load_gbsg2().rename(columns={"cens": "event"}).sample(n=200, random_state=1).reset_index(drop=True)
    run_d, pred_d, fin_d = _train(df, tmp_path, "days", 1.0)
    run_m, pred_m, fin_m = _train(df, tmp_path, "months", 30.44)
    assert list(pred_d["id"]) == list(pred_m["id"])
    # the grid was fitted on the training times and recorded in the data's unit
    assert fin_d["time_unit"] == "days" and fin_d["time_grid"]["fitted"] and fin_d["time_grid"]["tmax"] == 100
    assert fin_d["time_grid"]["bin_width"] == pytest.approx(30.44 * fin_m["time_grid"]["bin_width"], rel=1e-9)
    # predictions on the data's scale: the median prediction lies inside the observed times' 10-90 % range
    for pred, unit_scale in ((pred_d, 1.0), (pred_m, 30.44)):
        obs = df["time"].to_numpy() / unit_scale
        lo, hi = np.quantile(obs, [0.1, 0.9])
        assert lo < np.median(pred["pred_time"]) < hi
        assert (pred["pred_time"] > 0).all() and (pred["pred_time"] <= 1.2 * obs.max()).all()
    # days and months train the same model: C within 0.01, predictions and MAE equal after the unit change
    assert abs(fin_d["c_index"] - fin_m["c_index"]) < 0.01
    np.testing.assert_allclose(pred_d["pred_time"] / 30.44, pred_m["pred_time"], rtol=2e-3)
    assert fin_d["mae_uncensored"] == pytest.approx(30.44 * fin_m["mae_uncensored"], rel=2e-3)
    # the checkpoint carries the grid: load_trained predicts in days again
    trained = load_trained(run_d)
    assert trained.time_grid.state_dict() == fin_d["time_grid"]
    again = trained.predict(trained.dataset(ids=trained.split["val"]))
    np.testing.assert_allclose(again["pred_time"], pred_d["pred_time"], rtol=1e-5)
    pmf, times = trained.pmf(again["pred_time"].to_numpy())
    assert pmf.shape == (len(again), 100) and times[-1] == pytest.approx(100 * fin_d["time_grid"]["bin_width"])
    assert np.allclose(pmf.sum(1), 1.0, atol=1e-5)
