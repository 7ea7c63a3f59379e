"""The edge runtime: load a verified bundle and decide images, with no training stack.

Everything under ``lineguard.edge`` imports only numpy, Pillow, onnxruntime (OpenVINO
optionally), the standard library and :mod:`lineguard.preprocess`; a test imports it
with torch, MLflow, scikit-learn and pandas blocked. The public API:

- :class:`Decision` / :class:`Cost` (``edge.decision``): the decision settings
  (temperature, default and per-recipe thresholds, cost) as one record -- fitted by
  evaluation, shipped in the bundle, applied here.
- :func:`load_bundle` / :class:`Bundle` / :class:`BundleError` (``edge.bundle``): open a
  bundle folder or ``.tar.gz`` and refuse anything that cannot be trusted.
- :func:`open_runner` (``edge.runner``): the one way LineGuard opens an ONNX model
  (ONNX Runtime, or OpenVINO optionally), used by the predictor, export, evaluation and
  compression alike.
- :class:`Predictor` / :class:`Prediction` (``edge.predictor``): decisions per image;
  :func:`verify_bundle` re-checks a bundle's golden-batch parity on this machine.
- ``python -m lineguard.edge.bench`` (``edge.bench``): latency and throughput as JSON;
  :func:`time_calls` / :func:`latency_summary` (``edge.latency``) are the latency harness
  it shares with compression.
"""

from lineguard.edge.bundle import Bundle, BundleError, load_bundle
from lineguard.edge.decision import Cost, Decision, DecisionError
from lineguard.edge.latency import latency_summary, time_calls
from lineguard.edge.predictor import ImageFileError, Prediction, Predictor, verify_bundle
from lineguard.edge.runner import ModelLoadError, Runner, open_runner

__all__ = [
    "Bundle",
    "BundleError",
    "Cost",
    "Decision",
    "DecisionError",
    "ImageFileError",
    "ModelLoadError",
    "Prediction",
    "Predictor",
    "Runner",
    "latency_summary",
    "load_bundle",
    "open_runner",
    "time_calls",
    "verify_bundle",
]
