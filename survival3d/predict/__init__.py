"""Prediction for new patients (``run.py predict``) and model export (``run.py export``).

The layer above ``engine`` and ``explain``: it loads trained models (one run, a k-fold run or several runs as an
ensemble), prepares raw or preprocessed CTs with the model's own preprocessing plan, and writes per-patient
survival estimates, curves, heatmaps on the original CT grid and a summary page. See docs/predict.md.
"""

from survival3d.predict.models import Ensemble, load_ensemble, time_unit
from survival3d.predict.runner import PredictJob, predict_cases

__all__ = ["Ensemble", "load_ensemble", "time_unit", "PredictJob", "predict_cases"]
