"""The metrics the training engine tracks each epoch (and early-stops on), from a prediction table.

* ``c_index``: Harrell's concordance of the predicted times with the observed (time, event) pairs
  (:func:`~survival3d.metrics.survival.harrell_c_index` with ``risk = -pred_time``).
* ``c_index_oracle``: the same for the generator's noiseless ``expected_time`` (dummy data): the best C-index any
  model can expect on this sample, so a model is judged by its gap to the oracle.
* ``mae_uncensored``: mean |pred − t| over cases with an event (:func:`~survival3d.metrics.survival.mae_uncensored`).
* ``mae_censored``: the censored hinge error, mean over censored cases of max(0, c − pred)
  (:func:`~survival3d.metrics.survival.mae_censored_hinge`).
* ``val_loss``: the training loss on the validation set (mean over cases).

Undefined values are NaN (not None, unlike :func:`~survival3d.metrics.report.survival_metrics`): the engine compares
them numerically.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np

from survival3d.metrics import survival as sm

__all__ = ["validation_metrics", "METRIC_NAMES", "METRIC_MODES"]

log = logging.getLogger(__name__)

#: Each validation metric and whether larger (``"max"``) or smaller (``"min"``) is better.
METRIC_MODES = {"c_index": "max", "c_index_oracle": "max", "mae_uncensored": "min", "mae_censored": "min", "val_loss": "min"}
METRIC_NAMES = tuple(METRIC_MODES)


def _cindex(time: np.ndarray, score: np.ndarray, event: np.ndarray) -> float:
    """Harrell's C of ``score`` (higher = longer survival); NaN without events, pairs or finite scores."""
    if not np.all(np.isfinite(score)):
        log.warning("non-finite predictions: C-index set to NaN")
        return float("nan")
    if event.sum() == 0 or len(time) < 2:
        return float("nan")
    try:
        return sm.harrell_c_index(time, -score, event)
    except ValueError:  # no admissible pairs
        return float("nan")


def _mae(fn, time: np.ndarray, pred: np.ndarray, event: np.ndarray) -> float:
    if not np.all(np.isfinite(pred)):
        return float("nan")
    return fn(time, pred, event)


def validation_metrics(arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Metrics from ``time, event, pred_time[, expected_time][, loss_sum, n]`` arrays (NaN where undefined)."""
    time = np.asarray(arrays["time"], dtype=np.float64)
    event = np.asarray(arrays["event"], dtype=np.int64)
    pred = np.asarray(arrays["pred_time"], dtype=np.float64)
    out = {"c_index": _cindex(time, pred, event)}
    if "expected_time" in arrays:
        out["c_index_oracle"] = _cindex(time, np.asarray(arrays["expected_time"], dtype=np.float64), event)
    out["mae_uncensored"] = _mae(sm.mae_uncensored, time, pred, event)
    out["mae_censored"] = _mae(sm.mae_censored_hinge, time, pred, event)
    n = arrays.get("n", 0)
    out["val_loss"] = float(arrays["loss_sum"]) / n if n and not math.isnan(arrays.get("loss_sum", float("nan"))) else float("nan")
    return out
