"""All survival metrics of one prediction table in one dictionary (what ``run.py evaluate`` writes to metrics.json),
and the mean ± sd aggregation over cross-validation folds."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from survival3d.metrics import survival as sm

__all__ = ["survival_metrics", "aggregate_folds"]

log = logging.getLogger(__name__)


def _finite_or_none(x):
    x = float(x)
    return x if math.isfinite(x) else None


def _uno_tau(time: np.ndarray, event: np.ndarray) -> float | None:
    """Largest safe truncation: the first time where the censoring KM reaches 0 (None when it never does)."""
    knots, g = sm.censoring_km(time, event)
    zero = knots[g <= 0]
    return float(zero[0]) if zero.size else None


def survival_metrics(
    predictions: pd.DataFrame,
    pmf: np.ndarray | None = None,
    *,
    alpha_cens: float = 1.0,
    horizons: Sequence[float] | None = None,
    time_scale: float = 1.0,
) -> dict:
    """Every metric of a prediction table.

    Args:
        predictions: columns ``time``, ``event``, ``pred_time``, ``risk`` and optionally ``expected_time``
            (the noise-free time of synthetic data: gives ``c_index_oracle``, the best C-index any model can reach on
            these noisy observed times).
        pmf: (n, tmax) predicted distribution over t = 1..tmax, in the row order of ``predictions``; enables the
            Brier score, time-dependent AUC and censored NLL. ``None`` (e.g. a Cox model) skips them.
        alpha_cens: ALPHA_CENS of the censored NLL.
        horizons: times for the Brier score / td-AUC; default: quartiles of the event times inside follow-up.
        time_scale: time units per pmf column (the model's grid bin width): column k holds P(T = (k+1)·time_scale).
            The pmf-based metrics are computed in grid units (``time / time_scale``; Brier, td-AUC and the NLL are
            invariant to the scale of time) and horizons / ``ibs_range`` are reported in time units.

    Returns:
        JSON-ready dict; undefined values (no events, no censored cases) are ``None``.
    """
    missing = {"time", "event", "pred_time", "risk"} - set(predictions.columns)
    if missing:
        raise ValueError(f"predictions lack columns {sorted(missing)}.")
    time = predictions["time"].to_numpy(float)
    event = predictions["event"].to_numpy().astype(int)
    pred = predictions["pred_time"].to_numpy(float)
    risk = predictions["risk"].to_numpy(float)
    out: dict = {"n": int(time.size), "n_events": int(event.sum())}

    def _try(name, fn):
        try:
            out[name] = _finite_or_none(fn())
        except ValueError as e:  # undefined on this data (no comparable pair...): record why, keep going
            log.warning("%s undefined: %s", name, e)
            out[name] = None

    _try("c_index", lambda: sm.harrell_c_index(time, risk, event))
    if "expected_time" in predictions.columns and predictions["expected_time"].notna().all():
        expected = predictions["expected_time"].to_numpy(float)
        _try("c_index_oracle", lambda: sm.harrell_c_index(time, -expected, event))
    tau = _uno_tau(time, event)
    out["uno_tau"] = tau
    _try("c_index_uno", lambda: sm.uno_c_index(time, risk, event, tau=tau))
    out["mae_uncensored"] = _finite_or_none(sm.mae_uncensored(time, pred, event))
    out["mae_censored_hinge"] = _finite_or_none(sm.mae_censored_hinge(time, pred, event))
    out["mae_hinge"] = _finite_or_none(sm.mae_hinge(time, pred, event))
    if pmf is not None:
        pmf = np.asarray(pmf, dtype=float)
        if pmf.shape[0] != time.size:
            raise ValueError(f"pmf has {pmf.shape[0]} rows for {time.size} predictions.")
        scale = float(time_scale)
        if not scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}.")
        tg = time if scale == 1.0 else time / scale  # grid units: the pmf's column k is t = k + 1
        surv = sm.pmf_to_survival(pmf)
        h = sm.default_horizons(time, event) if horizons is None else np.asarray(horizons, dtype=float)
        hg = h if scale == 1.0 else h / scale
        out["horizons"] = [float(x) for x in h]
        if h.size:
            keys = [str(int(t) if float(t).is_integer() else t) for t in h]
            try:
                bs = sm.brier_score(tg, event, surv, hg)
                out["brier"] = {k: float(b) for k, b in zip(keys, bs)}
            except ValueError as e:
                log.warning("Brier score undefined: %s", e)
            # ranked by -log S(t) from the pmf's tail: 1 - S(t) rounds to 1 for every case where S(t) ~ 0
            log_s = sm.log_survival_at(sm.pmf_to_log_survival(pmf), hg)
            auc = sm.cumulative_dynamic_auc(tg, event, -log_s, hg)
            out["td_auc"] = {k: _finite_or_none(a) for k, a in zip(keys, auc)}
            out["td_auc_mean"] = _finite_or_none(np.nanmean(auc)) if np.isfinite(auc).any() else None
        grid = np.arange(1, pmf.shape[1] + 1, dtype=float)
        lo = max(1.0, float(tg.min()))  # from the earliest observed time, as scikit-survival's examples do
        hi = float(min(pmf.shape[1], np.nextafter(tg.max(), -np.inf)))
        ib_grid = grid[(grid >= lo) & (grid < hi)]
        _try("ibs", lambda: sm.integrated_brier_score(tg, event, surv, ib_grid))
        out["ibs_range"] = [float(ib_grid[0]) * scale, float(ib_grid[-1]) * scale] if ib_grid.size >= 2 else None
        _try("nll", lambda: sm.censored_nll_metric(pmf, tg, event, alpha_cens))
        out["alpha_cens"] = float(alpha_cens)
    return out


def _number(v) -> float | None:
    """``v`` as a finite float, or None (None, NaN, infinite, booleans and non-numbers are no metric values)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def aggregate_folds(per_fold: Sequence[Mapping], keys: Sequence[str] | None = None) -> dict:
    """Mean, sample sd (ddof=1; 0 for a single value) and n of each metric over folds: ``{metric: {"mean", "sd",
    "n"}}``.

    Args:
        per_fold: one metrics mapping per fold.
        keys: the metrics to aggregate; default: every key with a numeric value in some fold (sorted).

    None, NaN and infinite values are left out (``n`` counts the rest); a metric with no value left is omitted.
    """
    if keys is None:
        keys = sorted({k for m in per_fold for k, v in m.items() if _number(v) is not None})
    agg = {}
    for k in keys:
        vals = np.array([x for m in per_fold if (x := _number(m.get(k))) is not None], dtype=float)
        if vals.size == 0:
            continue
        agg[k] = {
            "mean": float(vals.mean()),
            "sd": float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
            "n": int(vals.size),
        }
    return agg
