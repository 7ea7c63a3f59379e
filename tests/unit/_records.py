"""Prediction records and small PNGs for the store, outbox and sync tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from lineguard.edge.store import PredictionRecord

T0 = 1_780_000_000.0  # a fixed capture time (2026) so tests that move the clock are exact


def make_record(i: int, *, station: str = "line1", decision: str = "accept", score: float = 0.05,
                threshold: float = 0.5, recipe: str | None = "vanilla", time: float | None = None,
                run: str = "r0") -> PredictionRecord:
    """Record number ``i`` of a run: frame id ``{run}-{i}``; a reject gets label 'bad'."""
    return PredictionRecord(
        frame_id=f"{run}-{i}", time=T0 + i if time is None else time, station=station, source="video:/v.mp4#" + str(i),
        recipe=recipe, label="bad" if decision == "reject" else "good", score=score, decision=decision,
        threshold=threshold, bundle_name="toy", bundle_version="1.0.0", latency_ms=1.5,
        stats={"mean": 0.25, "std": 0.1},
    )


def png(seed: int = 0, size: int = 16) -> bytes:
    """A small, real PNG (noise, so it does not compress to nothing)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
