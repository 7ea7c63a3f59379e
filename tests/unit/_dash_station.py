"""A station for the dashboard tests: the real SQLite :class:`~lineguard.edge.store.Store`, a real
:class:`~lineguard.edge.hotswap.ModelSlot` and optionally a real :class:`~lineguard.monitor.Monitor` fed every
decision (its reference is built here from grey frames like the ones the tests push, so a washed-out frame
is drift). Frames come over ``POST /v1/predict``; each record carries the monitor's image signals as its
``stats``. Served for the browser tests by tests/integration/_dash_serve.py.

The runtime branch's :class:`EdgeRuntime` (``lineguard serve``) replaces the push runtime here once it
is on main; the monitor stays, as the runtime does not feed one yet.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from lineguard.edge.hotswap import ModelSlot
from lineguard.edge.store import PredictionRecord, Store


def grey_reference(n: int = 400, seed: int = 0) -> Any:
    """A monitoring reference from noisy mid-grey frames (levels 60-200): what the tests' clean frames look like."""
    from lineguard.monitor import reference_from_images

    rng = np.random.default_rng(seed)
    images = [np.clip(rng.normal(int(rng.integers(60, 200)), 12, (32, 32, 3)), 0, 255).astype(np.uint8) for _ in range(n)]
    return reference_from_images(images, None, None)


def cone_frame(i: int, recipe: str, size: int = 96, drift: str | None = None, severity: float = 0.0) -> np.ndarray:
    """The i-th synthetic cone of a recipe (a tenth of them defective), optionally through a camera drift."""
    from lineguard.synth import apply_drift, draw_cone

    rng = np.random.default_rng(10_000 + i)
    bad = i % 10 == 0
    img = draw_cone(rng, recipe, "bad" if bad else "good", "missing_topping" if bad else "", size=size)
    return apply_drift(img, drift, severity, rng) if drift else img


def cone_reference(recipes: tuple[str, ...], n: int = 300) -> Any:
    """A monitoring reference from clean synthetic cones of ``recipes`` (frames 1_000_000 on: not the pushed ones)."""
    from lineguard.monitor import reference_from_images

    names = [recipes[i % len(recipes)] for i in range(n)]
    images = [cone_frame(1_000_000 + i, synth_recipe(r)) for i, r in enumerate(names)]
    return reference_from_images(images, names, None)


def synth_recipe(name: str) -> str:
    """The synth recipe a station recipe is drawn as (any name that is not one: vanilla sprinkles)."""
    from lineguard.synth import RECIPES

    return name if name in RECIPES else "vanilla_sprinkles"


class PushRuntime:
    """Decides pushed frames with the slot's predictor, records them in the store (image when sampled), feeds the monitor."""

    def __init__(self, slot: ModelSlot, store: Store, station: str, monitor: Any = None) -> None:
        self.slot, self.store, self.station, self.monitor = slot, store, station, monitor
        self._recipe: str | None = None
        self._seq = 0
        self._lock = threading.Lock()
        self._frames = 0
        self._decisions: dict[str, dict[str, int]] = {}
        self.start_ms = int(time.time() * 1000)

    def submit(self, image: np.ndarray, recipe: str | None = None) -> PredictionRecord:
        from lineguard.monitor import as_stats, signal_vector

        recipe = recipe if recipe is not None else self._recipe
        predictor = self.slot.current()
        pred = predictor.predict(image, recipe=recipe)
        assert not isinstance(pred, list)
        # As the runtime: the signals its monitor's reference was computed on, else those of the model input.
        vector = (self.monitor.signals.of_image(image) if self.monitor is not None
                  else signal_vector(image, predictor.params))
        stats = as_stats(vector)
        with self._lock:
            self._seq += 1
            rec = PredictionRecord(f"{self.start_ms}-{self._seq}", time.time(), self.station, "api", recipe, pred.label,
                                   pred.score, pred.decision, pred.threshold, pred.bundle_name, pred.bundle_version,
                                   pred.latency_ms, stats)
            png = None
            if self.store.wants_image(rec):
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, format="PNG")
                png = buf.getvalue()
            self.store.record(rec, png)
            if self.monitor is not None:
                self.monitor.update(stats, None, pred.score, recipe, time=rec.time, rejected=pred.rejected)
            self._frames += 1
            per = self._decisions.setdefault(recipe or "", {})
            per[pred.decision] = per.get(pred.decision, 0) + 1
        return rec

    def set_recipe(self, name: str | None) -> None:
        self._recipe = name

    @property
    def recipe(self) -> str | None:
        return self._recipe

    @property
    def metrics(self) -> dict[str, Any]:
        with self._lock:
            return {"frames": self._frames, "decisions": {k: dict(v) for k, v in self._decisions.items()},
                    "queue_depth": 0, "dropped": 0, "source": {"kind": "push", "connected": True, "reconnects": 0}}


@dataclass
class DashStation:
    name: str
    store: Store
    runtime: PushRuntime
    slot: ModelSlot
    monitor: Any = None


def make_monitor_bundle(out: Any, recipes: tuple[str, ...] = ("vanilla_sprinkles", "chocolate_nuts"),
                        n: int = 160) -> Any:
    """The toy bundle re-written with a calibrated monitoring reference of clean synthetic cones (as export ships it)."""
    from pathlib import Path

    from lineguard import export as ex
    from lineguard.edge import load_bundle
    from lineguard.export.bundle import monitor_reference
    from tests.unit._edge_bundles import make_toy_bundle

    out = Path(out)
    base = load_bundle(make_toy_bundle(out.parent / f"{out.name}-base", recipes=recipes,
                                       decision={"default_threshold": 0.45, "temperature": 2.0}))
    names = [recipes[i % len(recipes)] for i in range(n)]
    images = [cone_frame(2_000_000 + i, synth_recipe(r)) for i, r in enumerate(names)]
    rng = np.random.default_rng(0)
    val = rng.random(100)
    block, arrays = monitor_reference(images, names, None, val, (rng.random(100) < val).astype(int), 0.1,
                                      params=base.preprocess)
    g = base.load_arrays("golden.npz")
    expected = {k[len("expected_"):]: v for k, v in g.items() if k.startswith("expected_")}
    return ex.write_bundle(
        out, base.model_path, classes=list(base.classes), positive_class=base.positive_class, preprocess=base.preprocess,
        golden=ex.GoldenBatch(g["images"], g["recipes"], g["labels"], ""), expected=expected,
        parity=ex.compare_outputs(expected, expected, 0.5, 1.0, 1, 1e-4, "onnxruntime"), decision=base.decision,
        recipes=base.recipes, precision="fp32", opset=18, name="toy", version="2",
        reference={**base.meta["reference"], "monitor": block},
        reference_arrays={**base.load_arrays("reference.npz"), **arrays})
