"""Evaluation: honest numbers for a model, and the decision settings it ships with.

- :mod:`~lineguard.evaluate.metrics`: pure metric functions over labels and scores
  (confusion, balanced accuracy, false-reject and escape rates, ROC/PR AUC, ECE and
  reliability data, bootstrap CIs, cost-minimising thresholds, temperature scaling).
- :mod:`~lineguard.evaluate.scoring`: a run's float model or a bundle -> margins on a split.
- :mod:`~lineguard.evaluate.evaluation`: :func:`evaluate` and :class:`EvaluationResult`
  (temperature and thresholds fitted on val, everything measured on test).
- :mod:`~lineguard.evaluate.behaviour`: invariance and minimum-function checks.
- :mod:`~lineguard.evaluate.report`: the Markdown / self-contained HTML report.
- :mod:`~lineguard.evaluate.learning_curve`: "how much data do we need?".

Importing this package imports numpy and the config only; torch, MLflow and matplotlib
are imported by the functions that need them.
"""

from lineguard.evaluate.evaluation import EvaluationResult, evaluate, evaluate_predictions
from lineguard.evaluate.metrics import (
    Confusion,
    Thresholds,
    apply_temperature,
    bootstrap_ci,
    choose_threshold,
    choose_thresholds,
    confusion,
    decisions,
    expected_calibration_error,
    fit_temperature,
    pr_auc,
    rates,
    roc_auc,
    summarise,
)
from lineguard.evaluate.scoring import EvaluateError, Predictions, load_scorer, predict

__all__ = [
    "Confusion",
    "EvaluateError",
    "EvaluationResult",
    "Predictions",
    "Thresholds",
    "apply_temperature",
    "bootstrap_ci",
    "choose_threshold",
    "choose_thresholds",
    "confusion",
    "decisions",
    "evaluate",
    "evaluate_predictions",
    "expected_calibration_error",
    "fit_temperature",
    "load_scorer",
    "pr_auc",
    "predict",
    "rates",
    "roc_auc",
    "summarise",
]
