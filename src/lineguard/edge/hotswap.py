"""The station's model slot: which :class:`Predictor` decides now, and swapping it without a dropped frame.

A :class:`ModelSlot` holds the running predictor. Every decision reads it with
:meth:`ModelSlot.current` (one attribute read, so the loop and the API see either the old
or the new model, never half of one). :meth:`ModelSlot.swap` replaces it:

1. the new bundle is loaded with :func:`~lineguard.edge.load_bundle` under the station's
   trust settings (signing keys, pinned digest) and bundle limits -- a tampered, unsigned or
   foreign bundle is refused here;
2. its golden batch is re-checked on this machine (:func:`~lineguard.edge.verify_bundle`)
   when the bundle carries one;
3. it is opened *beside* the running model and warmed with one inference (a non-finite
   score refuses it);
4. the slot switches to it atomically, then tells its listeners (the runtime, a state file);
   if a listener fails, the slot switches back (the listeners already told are told again)
   and the swap is reported as rolled back.

Until step 4 the old model keeps deciding every frame; in-flight decisions on the old
predictor finish on it (they hold their own reference). One swap at a time: a second one
while the first runs is refused (:class:`SwapBusy`). Both models are in memory while the
new one is checked: budget twice the model's RSS for the swap. A swap lives in memory only:
a restart loads the bundle the station is configured with.

Imports the standard library, numpy and :mod:`lineguard.edge` only (no torch, no pydantic).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lineguard import LineguardError
from lineguard.edge.bundle import GOLDEN_FILE, Bundle, BundleLimits, load_bundle
from lineguard.edge.predictor import Predictor, verify_bundle
from lineguard.edge.signing import Trust

__all__ = ["ModelSlot", "SwapBusy", "SwapError", "SwapListener", "model_info", "prepare_predictor"]

SwapListener = Callable[[Predictor, Predictor], None]  # (old, new); raising rolls the swap back


class SwapError(LineguardError):
    """A swap was refused or rolled back; the old model is still serving. The message says why."""


class SwapBusy(SwapError):
    """Another swap is in progress; try again when it has finished."""


def model_info(predictor: Predictor) -> dict[str, Any]:
    """What identifies the model that decides: name, version, digest, signer, precision, classes, recipes."""
    b: Bundle = predictor.bundle
    return {
        "name": b.name, "version": b.version, "digest": b.digest, "signed_by": b.signed_by,
        "precision": b.precision, "classes": list(b.classes), "recipes": b.recipes, "source": b.source,
        "lineage": dict(b.meta.get("lineage") or {}),
    }


@dataclass(frozen=True)
class _Loaded:
    predictor: Predictor
    parity: dict[str, Any] | None


def prepare_predictor(
    path: str | Path,
    *,
    trust: Trust,
    limits: BundleLimits,
    threads: int = 1,
    backend: str = "ort",
    check_parity: bool = True,
    expected_digest: str | None = None,
) -> _Loaded:
    """Load, verify and warm a bundle; :class:`SwapError` (one line) if it cannot serve.

    Trust and limits are those of :func:`~lineguard.edge.load_bundle`; with ``check_parity``
    a bundle that carries a golden batch must reproduce it on this machine. The warm-up runs
    one inference on a blank frame, so the first real frame does not pay for the session's
    first run, and a model that gives a non-finite score is refused before it decides anything.
    """
    try:
        bundle = load_bundle(path, trust=trust, expected_digest=expected_digest, limits=limits)
        parity = None
        if check_parity and GOLDEN_FILE in bundle.meta.get("files", {}):
            parity = verify_bundle(bundle, threads=threads, backend=backend)
        predictor = Predictor(bundle, threads=threads, backend=backend)
        h, w = bundle.preprocess.size
        predictor.predict(np.zeros((h, w, 3), np.uint8))
    except LineguardError as exc:
        raise SwapError(f"model refused: {exc}") from None
    except Exception as exc:  # an unexpected failure of a loader must not take the station down
        raise SwapError(f"model refused: {type(exc).__name__}: {str(exc)[:300]}") from None
    return _Loaded(predictor, parity)


class ModelSlot:
    """The running :class:`Predictor` of a station, swappable under load (see the module docstring).

    ``trust`` and ``limits`` are the station's bundle settings, applied to every bundle the
    slot loads; ``threads`` and ``backend`` are passed to each new :class:`Predictor`.
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        trust: Trust | None = None,
        limits: BundleLimits | None = None,
        threads: int | None = None,
        backend: str | None = None,
        check_parity: bool = True,
    ) -> None:
        self._predictor = predictor
        self.trust = trust or Trust()
        self.limits = limits or BundleLimits()
        self.threads = threads if threads is not None else predictor.threads
        self.backend = backend if backend is not None else predictor.backend
        self.check_parity = check_parity
        self._swap_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._listeners: list[SwapListener] = []
        self._generation = 0
        self._loaded_at = time.time()
        self.swaps = {"ok": 0, "refused": 0, "rolled_back": 0, "busy": 0}
        self.last_error: str | None = None

    @classmethod
    def open(
        cls,
        bundle: str | Path,
        *,
        trust: Trust | None = None,
        limits: BundleLimits | None = None,
        threads: int = 1,
        backend: str = "ort",
        check_parity: bool = True,
    ) -> ModelSlot:
        """A slot around a bundle loaded with the checks a swap applies (trust, limits, warm-up).

        The golden-batch re-check is left to ``lineguard bundle verify`` for the first model (it
        costs a second session at start); swaps run it when ``check_parity``.
        """
        trust, limits = trust or Trust(), limits or BundleLimits()
        loaded = prepare_predictor(bundle, trust=trust, limits=limits, threads=threads, backend=backend,
                                   check_parity=False)
        return cls(loaded.predictor, trust=trust, limits=limits, threads=threads, backend=backend,
                   check_parity=check_parity)

    # --- reading -----------------------------------------------------------------------------------

    def current(self) -> Predictor:
        """The predictor that decides now. Hold the returned object for one decision, then ask again."""
        return self._predictor

    @property
    def generation(self) -> int:
        """How many swaps have taken effect (0 for the model the station started with)."""
        return self._generation

    @property
    def swapping(self) -> bool:
        return self._swap_lock.locked()

    def info(self) -> dict[str, Any]:
        """The running model's identity plus the slot's swap counters."""
        with self._state_lock:
            predictor, generation, loaded_at = self._predictor, self._generation, self._loaded_at
        return {**model_info(predictor), "generation": generation, "loaded_at": loaded_at,
                "swapping": self.swapping, "swaps": dict(self.swaps), "last_error": self.last_error}

    def add_listener(self, listener: SwapListener) -> None:
        """Call ``listener(old, new)`` after each switch (e.g. ``runtime.set_predictor(new)``).

        If a listener raises, the slot switches back and the listeners already told are
        called again with ``(new, old)``, so everything decides with the old model again.
        """
        self._listeners.append(listener)

    # --- swapping ----------------------------------------------------------------------------------

    def swap(self, path: str | Path, *, expected_digest: str | None = None) -> dict[str, Any]:
        """Replace the running model with the bundle at ``path``; returns the new model's info.

        Raises :class:`SwapBusy` while another swap runs and :class:`SwapError` when the
        bundle is refused or a listener fails (the old model is serving again). Thread-safe.
        """
        if not self._swap_lock.acquire(blocking=False):
            self.swaps["busy"] += 1
            raise SwapBusy("another model swap is in progress; try again when it has finished")
        try:
            try:
                loaded = prepare_predictor(path, trust=self.trust, limits=self.limits, threads=self.threads,
                                           backend=self.backend, check_parity=self.check_parity,
                                           expected_digest=expected_digest)
            except SwapError as exc:
                self.swaps["refused"] += 1
                self.last_error = f"{exc}; the running model keeps serving"
                raise SwapError(self.last_error) from None
            old, new = self._predictor, loaded.predictor
            self._switch(new, +1)
            told: list[SwapListener] = []
            try:
                for listener in list(self._listeners):
                    listener(old, new)
                    told.append(listener)
            except Exception as exc:
                self._switch(old, -1)
                for listener in reversed(told):  # those that switched switch back (best effort: old worked before)
                    with contextlib.suppress(Exception):
                        listener(new, old)
                self.swaps["rolled_back"] += 1
                self.last_error = (f"swap to '{path}' rolled back, the previous model is serving again: "
                                   f"{type(exc).__name__}: {str(exc)[:300]}")
                raise SwapError(self.last_error) from None
            self.swaps["ok"] += 1
            self.last_error = None
            info = self.info()
            info["parity"] = loaded.parity
            info["previous"] = {"name": old.bundle.name, "version": old.bundle.version, "digest": old.bundle.digest}
            return info
        finally:
            self._swap_lock.release()

    def _switch(self, predictor: Predictor, step: int) -> None:
        with self._state_lock:
            self._predictor = predictor
            self._generation += step
            self._loaded_at = time.time()
