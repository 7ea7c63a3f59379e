"""One way to run an ONNX model: :func:`open_runner`, used by everything that runs a model file.

The edge :class:`~lineguard.edge.predictor.Predictor`, export's parity check, the bundle
scorer of evaluation and compression's candidates all open their models here, so a model
measured or evaluated anywhere in LineGuard runs with the settings it runs with on the line:

- ONNX Runtime (``backend="ort"``): CPU provider, ``threads`` intra-op threads, one
  inter-op thread, sequential execution, full graph optimisation.
- OpenVINO (``backend="openvino"``, optional ``lineguard[openvino]``): CPU plugin, latency
  hint, one stream, and an explicit precision hint (``f32`` by default: OpenVINO's own
  default is bf16 on CPUs that have it, which moves logits by ~1 %).

Only numpy, onnxruntime (OpenVINO when asked for) and the standard library are imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from lineguard import LineguardError

Backend = Literal["ort", "openvino"]
BACKENDS: tuple[str, ...] = ("ort", "openvino")
PRECISION_HINTS: tuple[str, ...] = ("f32", "bf16", "f16")
INPUT_NAME = "image"


class ModelLoadError(LineguardError):
    """A model file the runtime cannot load; the message names the file and the runtime's ``reason``."""

    def __init__(self, path: Path, reason: str, runtime: str = "ONNX Runtime") -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{runtime} cannot load '{path}': {reason}")


class Runner(Protocol):
    """A loaded model: ``logits(x)`` and ``outputs(x)`` for an N x C x H x W float32 batch."""

    backend: str
    threads: int
    output_names: list[str]

    def logits(self, x: np.ndarray) -> np.ndarray: ...

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]: ...


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


class _OrtRunner:
    def __init__(self, model_path: Path, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(model_path, _first_line(exc)) from None
        self.backend = "ort"
        self.threads = threads
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._logits_only = ["logits"]

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(self._logits_only, {INPUT_NAME: x})[0]  # type: ignore[no-any-return]

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, {INPUT_NAME: x}), strict=True))


class _OpenVinoRunner:
    def __init__(self, model_path: Path, threads: int, precision_hint: str) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise LineguardError(
                "backend 'openvino' needs the openvino package: pip install 'lineguard[openvino]'"
            ) from None
        config: dict[str, str | int] = {
            "INFERENCE_PRECISION_HINT": precision_hint,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            compiled = ov.Core().compile_model(str(model_path), "CPU", config)
        except Exception as exc:
            raise ModelLoadError(model_path, _first_line(exc), "OpenVINO") from None
        self.backend = "openvino"
        self.threads = threads
        self.precision_hint = precision_hint
        self.request = compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in compiled.outputs]
        if "logits" not in self.output_names:
            raise ModelLoadError(model_path, f"outputs are {self.output_names}; LineGuard models give 'logits'",
                                 "OpenVINO")
        self._logits_index = self.output_names.index("logits")

    def logits(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: x})
        return np.array(self.request.get_output_tensor(self._logits_index).data)

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.request.infer({0: x})
        return {n: np.array(self.request.get_output_tensor(i).data) for i, n in enumerate(self.output_names)}


def open_runner(
    model_path: str | Path, backend: Backend | str = "ort", threads: int = 1, precision_hint: str = "f32"
) -> Runner:
    """Load an ONNX model file for inference, exactly as the edge runs it.

    ``threads`` is the intra-op thread count: 1 is the latency setting for a small model
    on a small device; 0 lets the runtime use every core (batch scoring off the line).
    ``precision_hint`` is passed to OpenVINO (ignored by ONNX Runtime). Raises
    :class:`ModelLoadError` for a file the runtime refuses, LineguardError for a bad option.
    """
    if backend not in BACKENDS:
        raise LineguardError(f"unknown backend '{backend}'; expected one of {', '.join(BACKENDS)}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise LineguardError(f"threads must be an integer >= 0 (0 = all cores), got {threads!r}")
    if precision_hint not in PRECISION_HINTS:
        raise LineguardError(f"unknown precision hint '{precision_hint}'; expected one of {', '.join(PRECISION_HINTS)}")
    path = Path(model_path)
    if not path.is_file():
        raise ModelLoadError(path, "the file does not exist")
    if backend == "openvino":
        return _OpenVinoRunner(path, threads, precision_hint)
    return _OrtRunner(path, threads)


def run_batched(runner: Runner, inputs: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """All outputs of ``runner`` for a preprocessed batch of any length, ``batch_size`` at a time."""
    if batch_size < 1:
        raise LineguardError(f"batch_size must be >= 1, got {batch_size}")
    chunks: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(inputs), batch_size):
        for name, out in runner.outputs(np.ascontiguousarray(inputs[i : i + batch_size])).items():
            chunks.setdefault(name, []).append(out)
    return {name: np.concatenate(c) for name, c in chunks.items()}
