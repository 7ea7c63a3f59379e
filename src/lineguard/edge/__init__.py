"""The edge runtime: load a verified bundle and decide images, with no training stack.

Everything under ``lineguard.edge`` imports only numpy, Pillow, onnxruntime (OpenVINO
optionally), the standard library and :mod:`lineguard.preprocess`; a test imports it
with torch, MLflow, scikit-learn and pandas blocked. The public API:

- :func:`load_bundle` / :class:`Bundle` / :class:`BundleError` (``edge.bundle``): open a
  bundle folder or ``.tar.gz`` and refuse anything that cannot be trusted.
- :class:`Predictor` / :class:`Prediction` (``edge.predictor``): decisions per image;
  :func:`verify_bundle` re-checks a bundle's golden-batch parity on this machine.
- ``python -m lineguard.edge.bench`` (``edge.bench``): latency and throughput as JSON.
"""

from lineguard.edge.bundle import Bundle, BundleError, load_bundle
from lineguard.edge.predictor import ImageFileError, Prediction, Predictor, verify_bundle

__all__ = ["Bundle", "BundleError", "ImageFileError", "Prediction", "Predictor", "load_bundle", "verify_bundle"]
