"""Moved to :mod:`survival3d.metrics.validation`; this alias goes once ``engine/trainer.py`` imports from there."""
from survival3d.metrics.validation import METRIC_MODES, METRIC_NAMES, validation_metrics as survival_metrics  # noqa: F401
