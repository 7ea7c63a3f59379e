"""A small in-test station for the API tests: a thread-safe in-memory store and a push runtime.

They implement the protocols of ``lineguard.edge.api`` (which follow the issue-12
interfaces) with real decisions from a real :class:`ModelSlot` over a toy bundle; the
store keeps rows in id order like the SQLite one. Replaced by the real Store and
EdgeRuntime once those are on main.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from lineguard.edge.hotswap import ModelSlot


@dataclass(frozen=True, slots=True)
class Record:
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

    @property
    def key(self) -> str:
        return f"{self.station}:{self.frame_id}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MemoryStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows: list[dict[str, Any]] = []
        self.images: dict[int, bytes] = {}
        self.feedback_rows: list[dict[str, Any]] = []
        self.closed = False
        self.degraded: list[str] = []

    def record(self, rec: Record, image_png: bytes | None = None) -> int:
        with self._lock:
            if self.closed:
                raise RuntimeError("store is closed")
            for row in self.rows:
                if row["key"] == rec.key:
                    return int(row["id"])
            rid = len(self.rows) + 1
            self.rows.append({"id": rid, "key": rec.key, **rec.to_dict(), "image": image_png is not None})
            if image_png is not None:
                self.images[rid] = image_png
            return rid

    def predictions(self, *, since: float | None = None, until: float | None = None, recipe: str | None = None,
                    decision: str | None = None, limit: int = 100, after_id: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            out = [r for r in self.rows if (after_id is None or r["id"] > after_id)
                   and (since is None or r["time"] >= since) and (until is None or r["time"] < until)
                   and (recipe is None or r["recipe"] == recipe) and (decision is None or r["decision"] == decision)]
        return [dict(r) for r in out[:limit]]

    def prediction(self, id: int) -> dict[str, Any] | None:
        with self._lock:
            return next((dict(r) for r in self.rows if r["id"] == id), None)

    def image(self, id: int) -> bytes | None:
        return self.images.get(id)

    def add_feedback(self, prediction_id: int, label: str, *, source: str = "operator", note: str = "") -> int:
        with self._lock:
            self.feedback_rows.append({"prediction_id": prediction_id, "label": label, "source": source, "note": note})
            return len(self.feedback_rows)

    def health(self) -> dict[str, Any]:
        if self.closed:
            raise RuntimeError("store is closed")
        return {"status": "degraded" if self.degraded else "ok", "reasons": list(self.degraded),
                "outbox_backlog": {"jsonl": 0}, "sync_backlog": {"records": 0, "images": 0, "feedback": 0}}

    def counts(self) -> dict[str, Any]:
        return {"predictions": len(self.rows)}

    def close(self) -> None:
        with self._lock:
            self.closed = True


class PushRuntime:
    """Decides pushed frames with the slot's current predictor and records them (rejects with their image)."""

    def __init__(self, slot: ModelSlot, store: MemoryStore, station: str = "test", delay_s: float = 0.0) -> None:
        self.slot, self.store, self.station = slot, store, station
        self._recipe: str | None = None
        self._seq = 0
        self._lock = threading.Lock()
        self._frames = 0
        self._decisions: dict[str, dict[str, int]] = {}
        self._lat: list[float] = []
        self.delay_s = delay_s
        self.start_ms = int(time.time() * 1000)

    def submit(self, image: np.ndarray, recipe: str | None = None) -> Record:
        if self.delay_s:
            time.sleep(self.delay_s)
        recipe = recipe if recipe is not None else self._recipe
        pred = self.slot.current().predict(image, recipe=recipe)
        assert not isinstance(pred, list)
        with self._lock:
            self._seq += 1
            seq = self._seq
        rec = Record(f"{self.start_ms}-{seq}", time.time(), self.station, "api", recipe, pred.label, pred.score,
                     pred.decision, pred.threshold, pred.bundle_name, pred.bundle_version, pred.latency_ms)
        png = None
        if pred.rejected:
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            png = buf.getvalue()
        self.store.record(rec, png)
        with self._lock:
            self._frames += 1
            per = self._decisions.setdefault(recipe or "", {})
            per[pred.decision] = per.get(pred.decision, 0) + 1
            self._lat.append(pred.latency_ms)
        return rec

    def set_recipe(self, name: str | None) -> None:
        self._recipe = name

    @property
    def recipe(self) -> str | None:
        return self._recipe

    @property
    def metrics(self) -> dict[str, Any]:
        with self._lock:
            lat = list(self._lat)
            edges = (1.0, 5.0, 25.0, 100.0)
            return {"frames": self._frames, "decisions": {k: dict(v) for k, v in self._decisions.items()},
                    "latency_ms": {"buckets": [(e, sum(1 for x in lat if x <= e)) for e in edges] + [("+Inf", len(lat))],
                                   "sum": sum(lat), "count": len(lat)},
                    "queue_depth": 0, "dropped": 0, "source": {"kind": "push", "connected": True, "reconnects": 0}}


@dataclass
class StationFixture:
    name: str
    store: MemoryStore
    runtime: PushRuntime
    slot: ModelSlot

    def close(self) -> None:
        self.store.close()


def make_station(bundle: Any, name: str = "test", delay_s: float = 0.0) -> StationFixture:
    slot = ModelSlot.open(bundle)
    store = MemoryStore()
    return StationFixture(name, store, PushRuntime(slot, store, name, delay_s), slot)
