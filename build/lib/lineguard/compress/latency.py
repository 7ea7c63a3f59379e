"""Running and timing candidates as the edge runs them.

Every candidate model is opened with :func:`lineguard.edge.runner.open_runner` (the edge's
own settings: ONNX Runtime sequential with full graph optimisation, or OpenVINO with an
explicit ``f32`` precision hint) and timed with the edge's latency harness
(:func:`lineguard.edge.latency.time_calls`), each in a fresh subprocess, interleaved in
rounds so machine noise hits all candidates alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lineguard.compress.select import Backend, CompressError, LatencyStats

OPENVINO_PRECISION = "f32"


def runner(model_path: str | Path, backend: Backend, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """``batch (Nx3xHxW float32) -> logits`` for a model file, opened by :func:`lineguard.edge.open_runner`
    with the edge's settings (OpenVINO with the explicit ``f32`` hint), so a measured candidate is the
    model the edge would run."""
    from lineguard.edge.runner import BACKENDS, open_runner

    if backend not in BACKENDS:
        raise CompressError(f"unknown backend '{backend}'; expected {' or '.join(BACKENDS)}")
    return open_runner(model_path, backend, threads, OPENVINO_PRECISION).logits


def openvino_precision(model_path: str | Path, hint: str | None = OPENVINO_PRECISION) -> str:
    """The inference precision OpenVINO compiles ``model_path`` with on this CPU: under ``hint``
    (what LineGuard runs), or OpenVINO's own default when ``hint`` is None (bf16 on CPUs with it)."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": hint} if hint else {}
    compiled = ov.Core().compile_model(str(model_path), "CPU", config)
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    return str(value.to_string() if hasattr(value, "to_string") else value)


def openvino_available() -> bool:
    """Whether the optional OpenVINO backend (``lineguard[openvino]``) can be imported."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def predict_logits(
    model_path: str | Path, backend: Backend, images: np.ndarray, threads: int = 2, batch_size: int = 1
) -> np.ndarray:
    """Logits of ``images`` (Nx3xHxW float32). Batch 1 by default: what the edge runs, and the
    shape INT8 activations were calibrated for."""
    run = runner(model_path, backend, threads)
    outs = [run(np.ascontiguousarray(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def _time_model(
    model_path: str, backend: Backend, threads: int, sample: np.ndarray, warmup: int, repeats: int
) -> list[float]:
    """Per-call wall times (ms) of ``repeats`` batch-1 runs after ``warmup`` untimed ones (the edge's harness)."""
    from lineguard.edge.latency import time_calls

    run = runner(model_path, backend, threads)
    return time_calls(lambda: run(sample), warmup, repeats)


def latency_worker() -> None:
    """Subprocess entry: read a job (JSON) from stdin, print its timings as JSON (see :func:`measure_latency`)."""
    job = json.loads(sys.stdin.read())
    sample = np.load(job["sample"])
    times = _time_model(job["model"], job["backend"], job["threads"], sample, job["warmup"], job["repeats"])
    print(json.dumps({"times_ms": times}))


def _run_worker(job: dict[str, Any]) -> list[float]:
    code = "from lineguard.compress.latency import latency_worker; latency_worker()"
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"])}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CompressError(f"latency measurement of '{job['model']}' ({job['backend']}) failed: {tail[0]}")
    return list(json.loads(proc.stdout.strip().splitlines()[-1])["times_ms"])


def latency_stats(times_ms: Sequence[float], threads: int) -> LatencyStats:
    """Median and 99th percentile of per-call times (:func:`lineguard.edge.latency.latency_summary`)."""
    from lineguard.edge.latency import latency_summary

    summary = latency_summary(times_ms)
    return LatencyStats(threads=threads, median_ms=summary["median_ms"], p99_ms=summary["p99_ms"], runs=len(times_ms))


def measure_latency(
    models: Mapping[str, tuple[str | Path, Backend]],
    sample: np.ndarray,
    threads: Sequence[int] = (1, 2),
    warmup: int = 50,
    repeats: int = 500,
    rounds: int = 3,
    progress: bool = False,
) -> dict[str, dict[int, LatencyStats]]:
    """Batch-1 latency of several models, each measured in a fresh subprocess.

    The ``repeats`` timed calls (after ``warmup`` untimed ones) are split over ``rounds``; in every
    round each (model, threads) pair runs once, in the same order, so slow phases of a busy machine
    hit all candidates alike. ``models`` maps a name to (model file, backend); ``sample`` is one
    preprocessed 1x3xHxW image. Returns name -> threads -> stats.
    """
    if sample.ndim != 4 or sample.shape[0] != 1:
        raise CompressError(f"the latency sample must be one 1x3xHxW image, got shape {sample.shape}")
    rounds = max(1, min(rounds, repeats))
    per_round = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    times: dict[tuple[str, int], list[float]] = {(n, t): [] for n in models for t in threads}
    jobs = [(r, n, t) for r in range(rounds) for n in models for t in threads]
    with tempfile.TemporaryDirectory() as tmp:
        sample_path = Path(tmp) / "sample.npy"
        np.save(sample_path, np.ascontiguousarray(sample, dtype=np.float32))
        iterator: Any = jobs
        if progress:
            from rich.progress import track

            iterator = track(jobs, description="Measuring latency")
        for r, name, t in iterator:
            path, backend = models[name]
            job = {
                "model": str(path),
                "backend": backend,
                "threads": int(t),
                "sample": str(sample_path),
                "warmup": warmup,
                "repeats": per_round[r],
            }
            times[(name, t)].extend(_run_worker(job))
    return {n: {t: latency_stats(times[(n, t)], t) for t in threads} for n in models}
