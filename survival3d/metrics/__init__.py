"""Survival metrics (concordance, MAE, IPCW Brier score, time-dependent AUC, censored NLL), their per-run report, the
engine's per-epoch validation metrics and evaluation figures. See :mod:`survival3d.metrics.survival` for the formulas."""

from survival3d.metrics.report import aggregate_folds, survival_metrics
from survival3d.metrics.survival import (
    brier_score,
    censored_nll_metric,
    censoring_km,
    cumulative_dynamic_auc,
    default_horizons,
    harrell_c_index,
    integrated_brier_score,
    mae_censored_hinge,
    mae_hinge,
    mae_uncensored,
    pmf_to_survival,
    survival_at,
    uno_c_index,
)
from survival3d.metrics.validation import METRIC_MODES, METRIC_NAMES, validation_metrics

__all__ = [
    "aggregate_folds",
    "survival_metrics",
    "validation_metrics",
    "METRIC_MODES",
    "METRIC_NAMES",
    "brier_score",
    "censored_nll_metric",
    "censoring_km",
    "cumulative_dynamic_auc",
    "default_horizons",
    "harrell_c_index",
    "integrated_brier_score",
    "mae_censored_hinge",
    "mae_hinge",
    "mae_uncensored",
    "pmf_to_survival",
    "survival_at",
    "uno_c_index",
]
