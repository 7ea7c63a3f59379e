"""The latency harness: time a call the same way everywhere, summarise the times the same way.

``edge.bench`` (``lineguard bench``) and compression's candidate measurements both time
with :func:`time_calls` (warm-up calls first, then ``perf_counter_ns`` around each call
with the garbage collector paused, so a collection never lands inside one timing) and
summarise with :func:`latency_summary`. Only numpy and the standard library are imported.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence

import numpy as np

from lineguard import LineguardError


def time_calls(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Wall time (ms) of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls."""
    if warmup < 0 or repeats < 0:
        raise LineguardError(f"warmup and repeats must be >= 0, got {warmup} and {repeats}")
    for _ in range(warmup):
        fn()
    out = []
    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = clock()
            fn()
            out.append((clock() - t0) / 1e6)
    finally:
        if gc_was_enabled:
            gc.enable()
    return out


def latency_summary(times_ms: Sequence[float], batch: int = 1) -> dict[str, float]:
    """Pure: median, p90, p99, mean, min (ms per call) and throughput (images/s at ``batch`` per call)."""
    t = np.asarray(times_ms, np.float64)
    if t.size == 0:
        raise LineguardError("no timings to summarise")
    mean = float(t.mean())
    return {
        "median_ms": float(np.median(t)),
        "p90_ms": float(np.quantile(t, 0.90)),
        "p99_ms": float(np.quantile(t, 0.99)),
        "mean_ms": mean,
        "min_ms": float(t.min()),
        "throughput_per_s": batch * 1000.0 / mean if mean > 0 else float("inf"),
    }
