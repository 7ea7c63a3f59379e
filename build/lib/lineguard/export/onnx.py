"""torch -> ONNX: one input ``image``, outputs ``logits`` and ``embedding``, checked against torch.

:func:`export_onnx` wraps a model so the ONNX graph has one input ``image``
(N x 3 x H x W float32, dynamic batch) and two outputs, ``logits`` and ``embedding``,
exports it with ``torch.onnx.export`` (the dynamo exporter) and checks it against torch
on a fixed golden batch: max |logit difference| within ``atol`` and identical decisions.
"The export ran" proves nothing; the parity check is the proof.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lineguard.edge.bundle import INPUT_NAME
from lineguard.edge.runner import open_runner, run_batched
from lineguard.export.parity import ExportError, GoldenBatch, ParityReport, compare_outputs, synthetic_golden
from lineguard.preprocess import PreprocessParams

if TYPE_CHECKING:
    import torch


def _export_wrapper(model: torch.nn.Module) -> torch.nn.Module:
    """Wrap a LineGuard model so one forward pass returns (logits, embedding)."""
    import torch

    class _WithEmbedding(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.inner.forward_with_embedding(image)  # type: ignore[operator,no-any-return]

    if not hasattr(model, "forward_with_embedding"):
        raise ExportError(f"{type(model).__name__} has no forward_with_embedding; use a model from lineguard.models")
    return _WithEmbedding(model).eval()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The dynamo exporter prints progress and warns about torchvision ops; keep the CLI readable."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def torch_outputs(model: torch.nn.Module, inputs: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """(logits, embedding) of the float model for a preprocessed batch, in eval mode on the CPU."""
    import torch

    wrapped = _export_wrapper(model).cpu()
    logits, emb = [], []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch_size):
            lo, em = wrapped(torch.from_numpy(np.ascontiguousarray(inputs[i : i + batch_size])))
            logits.append(lo.numpy())
            emb.append(em.numpy())
    return {"logits": np.concatenate(logits), "embedding": np.concatenate(emb)}


def onnx_outputs(model_path: str | Path, inputs: np.ndarray, batch_size: int = 64, threads: int = 0) -> dict[str, np.ndarray]:
    """(logits, embedding) of an ONNX file for a preprocessed batch, run by :func:`lineguard.edge.open_runner`.

    ``threads=0`` uses every core (offline scoring); the outputs do not depend on it.
    """
    return run_batched(open_runner(model_path, "ort", threads), inputs, batch_size)


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` produced: the file, its signature and the parity it reached."""

    path: Path
    opset: int
    inputs: dict[str, list[int | None]]
    outputs: dict[str, list[int | None]]
    parity: ParityReport
    expected: dict[str, np.ndarray] = field(repr=False)  # torch outputs on the golden batch


def export_onnx(
    model: torch.nn.Module,
    preprocess_params: PreprocessParams,
    path: str | Path,
    opset: int = 18,
    golden: GoldenBatch | None = None,
    atol: float = 1e-4,
    thresholds: np.ndarray | float = 0.5,
    temperature: float = 1.0,
    positive_index: int = 1,
) -> OnnxExport:
    """Export ``model`` to a single ONNX file (dynamic batch) and check parity with torch.

    Input ``image`` (N x 3 x H x W float32 at ``preprocess_params.size``); outputs
    ``logits`` (N x classes) and ``embedding`` (N x features). The parity check runs the
    golden batch (synthetic when None) through torch and ONNX Runtime and raises
    ExportError unless every logit is within ``atol`` and every decision (with the given
    temperature and thresholds) is identical.
    """
    import torch

    if opset < 17:
        raise ExportError(f"opset must be >= 17, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = preprocess_params.size
    wrapped = _export_wrapper(model).cpu()
    example = torch.zeros(2, preprocess_params.channels, h, w)
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        with _quiet():
            torch.onnx.export(
                wrapped,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=["logits", "embedding"],
                opset_version=opset,
                dynamo=True,
                external_data=False,
                dynamic_shapes={"image": {0: batch}},
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    golden = golden if golden is not None else synthetic_golden(preprocess_params, 16)
    inputs = golden.inputs(preprocess_params)
    expected = torch_outputs(model, inputs)
    actual = onnx_outputs(path, inputs)
    report = compare_outputs(expected, actual, thresholds, temperature, positive_index, atol, "torch-fp32")
    if not report.passed:
        raise ExportError(
            f"parity check failed for '{path}': max |logit diff| {report.max_abs_logit_diff:.2e} "
            f"(tolerance {atol:g}), {report.decision_flips} of {report.n} golden decisions differ"
        )
    n_cls, n_emb = expected["logits"].shape[1], expected["embedding"].shape[1]
    return OnnxExport(
        path=path,
        opset=opset,
        inputs={INPUT_NAME: [None, preprocess_params.channels, h, w]},
        outputs={"logits": [None, int(n_cls)], "embedding": [None, int(n_emb)]},
        parity=report,
        expected=expected,
    )


