"""torch -> ONNX with a parity check, and the bundle: the unit the edge deploys.

- :mod:`~lineguard.export.parity`: the golden batch and :func:`compare_outputs` (pure).
- :mod:`~lineguard.export.onnx`: :func:`export_onnx` -- one input ``image``, outputs
  ``logits`` and ``embedding``, dynamic batch, checked against torch on the golden batch.
- :mod:`~lineguard.export.bundle`: :func:`write_bundle` (atomic, any ONNX file and
  precision label, the :class:`~lineguard.edge.decision.Decision` it ships),
  :func:`rebundle` (swap the model of a bundle), :func:`reference_statistics`.
- :mod:`~lineguard.export.run`: :func:`export`, the whole step for a tracked run.

Importing this package imports numpy and the edge runtime only; torch, MLflow and the
evaluation code are imported by the functions that need them. The bundle format is
documented in docs/deployment.md.
"""

from lineguard.edge.predictor import scores_from_logits
from lineguard.export.bundle import (
    EMBEDDING_SAMPLE,
    HIST_BINS,
    QUANTILES,
    rebundle,
    reference_statistics,
    verify_bundle,
    write_bundle,
)
from lineguard.export.onnx import OnnxExport, export_onnx, onnx_outputs, torch_outputs
from lineguard.export.parity import (
    ExportError,
    GoldenBatch,
    ParityReport,
    compare_outputs,
    golden_batch,
    synthetic_golden,
)
from lineguard.export.run import ExportResult, export

__all__ = [
    "EMBEDDING_SAMPLE",
    "HIST_BINS",
    "QUANTILES",
    "ExportError",
    "ExportResult",
    "GoldenBatch",
    "OnnxExport",
    "ParityReport",
    "compare_outputs",
    "export",
    "export_onnx",
    "golden_batch",
    "onnx_outputs",
    "rebundle",
    "reference_statistics",
    "scores_from_logits",
    "synthetic_golden",
    "torch_outputs",
    "verify_bundle",
    "write_bundle",
]
