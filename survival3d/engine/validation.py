"""Validation metrics of a survival model, computed from a prediction table.

* ``c_index``: Harrell's concordance of the predicted times with the observed (time, event) pairs,
  ``lifelines.utils.concordance_index(time, pred_time, event)`` (higher predicted time = longer survival).
* ``c_index_oracle``: the same for the generator's noiseless ``expected_time`` (dummy data): the best C-index any
  model can expect on this sample, so a model is judged by its gap to the oracle.
* ``mae_uncensored``: mean |pred − t| over cases with an event.
* ``mae_censored``: the censored hinge error, mean over censored cases of max(0, c − pred) (a prediction beyond
  the censoring time c is not an error, one before it is).
* ``val_loss``: the training loss on the validation set (mean over cases).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
from lifelines.utils import concordance_index

__all__ = ["survival_metrics", "METRIC_NAMES", "METRIC_MODES"]

log = logging.getLogger(__name__)

METRIC_MODES = {"c_index": "max", "c_index_oracle": "max", "mae_uncensored": "min", "mae_censored": "min", "val_loss": "min"}
METRIC_NAMES = tuple(METRIC_MODES)


def _cindex(time: np.ndarray, score: np.ndarray, event: np.ndarray) -> float:
    if not np.all(np.isfinite(score)):
        log.warning("non-finite predictions: C-index set to NaN")
        return float("nan")
    if event.sum() == 0 or len(time) < 2:
        return float("nan")
    try:
        return float(concordance_index(time, score, event))
    except ZeroDivisionError:  # no admissible pairs
        return float("nan")


def survival_metrics(arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Metrics from ``time, event, pred_time[, expected_time][, loss_sum, n]`` arrays (NaN where undefined)."""
    time = np.asarray(arrays["time"], dtype=np.float64)
    event = np.asarray(arrays["event"], dtype=np.int64)
    pred = np.asarray(arrays["pred_time"], dtype=np.float64)
    out = {"c_index": _cindex(time, pred, event)}
    if "expected_time" in arrays:
        out["c_index_oracle"] = _cindex(time, np.asarray(arrays["expected_time"], dtype=np.float64), event)
    unc, cen = event == 1, event == 0
    out["mae_uncensored"] = float(np.abs(pred[unc] - time[unc]).mean()) if unc.any() else float("nan")
    out["mae_censored"] = float(np.maximum(time[cen] - pred[cen], 0.0).mean()) if cen.any() else float("nan")
    n = arrays.get("n", 0)
    out["val_loss"] = float(arrays["loss_sum"]) / n if n and not math.isnan(arrays.get("loss_sum", float("nan"))) else float("nan")
    return out
