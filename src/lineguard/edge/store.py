"""Stub of the store's record type until the STORE helper's ``edge/store.py`` is merged.

Only :class:`PredictionRecord`, exactly as interfaces-12.md (and the STORE helper's
work in progress) define it, so the runtime and its tests can build records. The merge
replaces this file with the real store (SQLite in WAL mode, the outbox, sync).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from lineguard import LineguardError

__all__ = ["PredictionRecord", "StoreError"]

DECISIONS = ("accept", "reject")  # lineguard.edge.predictor ACCEPT / REJECT
_STATION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class StoreError(LineguardError):
    """The store cannot be opened or written, or was given something it cannot hold."""


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One decided frame, as the edge writes it and every sink sends it; ``key`` is the idempotency key."""

    frame_id: str
    time: float
    station: str
    source: str
    recipe: str | None
    label: str
    score: float
    decision: str
    threshold: float
    bundle_name: str
    bundle_version: str
    latency_ms: float
    stats: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _STATION_RE.match(self.station or ""):
            raise StoreError(f"station '{self.station}' is not a plain name; expected letters, digits, "
                             "'.', '_' or '-' (at most 64, no ':' or '/')")
        if not self.frame_id or len(self.frame_id) > 200:
            raise StoreError(f"frame_id must be 1-200 characters, got {self.frame_id!r}")
        if self.decision not in DECISIONS:
            raise StoreError(f"decision '{self.decision}' is not one of {', '.join(DECISIONS)}")
        for name in ("time", "score", "threshold", "latency_ms"):
            if not math.isfinite(getattr(self, name)):
                raise StoreError(f"{name} must be a finite number, got {getattr(self, name)!r}")

    @property
    def key(self) -> str:
        return f"{self.station}:{self.frame_id}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe payload (the record's fields plus ``key``); a non-finite statistic becomes null."""
        return {
            "key": self.key, "frame_id": self.frame_id, "time": self.time, "station": self.station,
            "source": self.source, "recipe": self.recipe, "label": self.label, "score": self.score,
            "decision": self.decision, "threshold": self.threshold, "bundle_name": self.bundle_name,
            "bundle_version": self.bundle_version, "latency_ms": self.latency_ms,
            "stats": {str(k): _finite(float(v)) for k, v in self.stats.items()},
        }
