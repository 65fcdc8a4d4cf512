"""The time grid (survival3d/time_grid.py): times in the user's unit, the loss on an internal grid."""

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from survival3d.config import ExperimentConfig, load_config
from survival3d.errors import ConfigError
from survival3d.losses import build_loss
from survival3d.losses.functional import censored_nll
from survival3d.metrics import survival_metrics
from survival3d.time_grid import TimeGrid, fit_time_grid, resolve_time_settings, resolved_config


def _cfg(*overrides):
    return load_config(None, list(overrides), schema=ExperimentConfig)


def test_defaults_reproduce_the_integer_grid_and_the_tuned_values():
    """Default config (dummy data, loss.tmax auto): the generator's grid 1..100 with VAR 100, loc bias 50, scale 10."""
    cfg = _cfg()
    grid = fit_time_grid(cfg, [5.0, 300.0])  # dummy data: the times do not move the grid
    assert grid == TimeGrid(tmax=100) and grid.identity
    assert resolve_time_settings(cfg, grid) == {"loss": {"tmax": 100, "var_init": 100.0},
                                                 "head": {"loc_bias_init": 50.0, "loc_scale": 10.0}}
    t = torch.rand(5) * 100
    assert grid.to_grid(t) is t and grid.from_grid(t) is t
    # an integer tmax on a manifest is the identity grid too; explicit numbers are kept as they are
    cfg = _cfg("data.source=manifest", "loss.tmax=2400", "loss.var_init=7.5", "head.loc_scale=3")
    grid = fit_time_grid(cfg, [10.0, 5000.0])
    assert grid == TimeGrid(tmax=2400)
    assert resolve_time_settings(cfg, grid) == {"loss": {"tmax": 2400, "var_init": 7.5},
                                                 "head": {"loc_bias_init": 1200.0, "loc_scale": 3.0}}


def test_auto_grid_is_fitted_on_training_times_and_scales_with_the_unit(rng):
    days = rng.uniform(5, 3000, 50)
    cfg = _cfg("data.source=manifest", "data.time_unit=days", "loss.auto_bins=150", "loss.auto_margin=1.25")
    g_days = fit_time_grid(cfg, days)
    assert g_days.fitted and g_days.tmax == 150 and g_days.unit == "days"
    assert g_days.bin_width == pytest.approx(1.25 * days.max() / 150, rel=1e-12)
    g_months = fit_time_grid(cfg, days / 30.44)
    assert g_months.bin_width * 30.44 == pytest.approx(g_days.bin_width, rel=1e-12)
    np.testing.assert_allclose(g_days.to_grid(days), g_months.to_grid(days / 30.44), rtol=1e-12)
    assert g_days.times()[-1] == pytest.approx(1.25 * days.max())
    assert TimeGrid.from_state(g_days.state_dict()) == g_days
    # the built loss and model follow the grid: TMAX = bins, VAR (TMAX/10)^2, loc bias TMAX/2, loc scale TMAX/10
    gcfg = resolved_config(cfg, g_days)
    loss = build_loss(gcfg.loss)
    assert loss.tmax == 150 and loss.variance == pytest.approx(225.0)
    assert gcfg.head.loc_bias_init == 75.0 and gcfg.head.loc_scale == 15.0 and "auto_bins" not in gcfg.loss


def test_same_loss_in_days_and_months(rng):
    """The loss sees grid units: the same cases in days and in months give the same NLL for the same prediction."""
    days = torch.from_numpy(rng.uniform(5, 3000, 40))
    event = torch.from_numpy(rng.integers(0, 2, 40))
    cfg = _cfg("data.source=manifest")
    g_d, g_m = fit_time_grid(cfg, days.numpy()), fit_time_grid(cfg, days.numpy() / 30.44)
    pred_g = torch.from_numpy(rng.uniform(1, 100, 40))
    nll_d = censored_nll(pred_g, g_d.to_grid(days), event, variance=100.0, tmax=100)
    nll_m = censored_nll(pred_g, g_m.to_grid(days / 30.44), event, variance=100.0, tmax=100)
    assert nll_d.item() == pytest.approx(nll_m.item(), rel=1e-9)
    np.testing.assert_allclose(g_d.from_grid(pred_g).numpy() / 30.44, g_m.from_grid(pred_g).numpy(), rtol=1e-12)


def test_warns_about_clipped_and_sub_unit_times(caplog):
    grid = TimeGrid(tmax=100, unit="months")
    times = [0.4, 0.7, 5.0, 99.5, 150.0, 230.0, 120.0]
    events = [1, 0, 1, 0, 1, 0, 1]
    with caplog.at_level(logging.WARNING, logger="survival3d.time_grid"):
        counts = grid.check(times, events, what="training", source="m.csv")
    assert counts == {"n": 7, "events_clipped": 2, "censored_clipped": 2, "below_first_bin": 2}
    text = caplog.text
    assert "4 of 7 training times (m.csv) exceed the time grid" in text and "max 230 months" in text
    assert "2 of 7 training times (m.csv) are below the first grid bin" in text and "min 0.4 months" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="survival3d.time_grid"):
        assert grid.check([1.0, 50.0, 99.0], [1, 0, 0])["events_clipped"] == 0
    assert caplog.text == ""


@pytest.mark.parametrize("key, value", [("loss.tmax", "soon"), ("loss.tmax", 1), ("loss.var_init", "big"),
                                        ("head.loc_scale", -1), ("loss.auto_margin", 0.5)])
def test_bad_time_settings_are_config_errors(key, value):
    cfg = _cfg("data.source=manifest", f"{key}={value}")
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        resolve_time_settings(cfg, fit_time_grid(cfg, [1.0, 10.0]))


def test_pmf_metrics_in_time_units_equal_those_in_grid_units(rng):
    """survival_metrics(time_scale=w) on times in days = the same metrics on times / w with the integer grid."""
    n, w = 60, 27.3
    tg = rng.uniform(2, 90, n)
    event = rng.integers(0, 2, n)
    pred = rng.uniform(10, 80, n)
    pmf = rng.dirichlet(np.ones(100), n)
    grid_df = pd.DataFrame({"time": tg, "event": event, "pred_time": pred, "risk": -pred})
    days_df = grid_df.assign(time=tg * w, pred_time=pred * w, risk=-pred * w)
    hg = [20.0, 40.0, 60.0]
    m_g = survival_metrics(grid_df, pmf, horizons=hg)
    m_d = survival_metrics(days_df, pmf, horizons=[h * w for h in hg], time_scale=w)
    for key in ("c_index", "nll", "ibs", "td_auc_mean"):
        assert m_d[key] == pytest.approx(m_g[key], rel=1e-9), key
    assert list(m_d["brier"].values()) == pytest.approx(list(m_g["brier"].values()), rel=1e-9)
    assert m_d["mae_uncensored"] == pytest.approx(w * m_g["mae_uncensored"], rel=1e-9)
    assert m_d["ibs_range"] == pytest.approx([x * w for x in m_g["ibs_range"]])
