"""Shadow mode: a challenger bundle decides the champion's frames beside it, without ever acting on the line.

Before a new model decides what the line rejects, it can watch: :class:`ShadowRunner`
holds a challenger :class:`~lineguard.edge.predictor.Predictor` (loaded and verified like
the champion: same loader, same trust settings, same warm-up) and scores every frame the
champion decided, after the champion's decision was recorded. It has no sinks, no PLC
signal and no say in anything the line sees; what it produces goes into the store's
``shadow`` table only -- per frame the champion's ``prediction_id``, the challenger's
``bundle_version``, ``score`` and ``decision``, and whether the two ``agree``. A frame the
two decide differently keeps its image (reason ``shadow_disagreement``), so it can be
labelled: those are the frames that say which model is right.

Off the hot path: the champion's recorder only :meth:`~ShadowRunner.offer` s each frame
to a bounded queue (``put_nowait``: a few microseconds, never a wait). One worker thread
takes the frames in small batches, runs the challenger and writes the results to the store
in a few large transactions (at most one a second, or per 64 frames), so the champion's own
commits seldom wait for the store's one writer. When the
challenger cannot keep up, the queue fills and new frames are *skipped* (counted), never
queued without bound and never waited for: the champion decides at its own pace whatever
the challenger does. The worker runs at a lower CPU priority (``nice``, on Linux), so on a
busy device the champion's thread is served first. The queue holds decoded frames: its
memory is at most ``queue_size`` frames (32 VGA frames: about 30 MB).

:class:`ShadowSlot` is the station's place for at most one challenger: install one from a
bundle path or an uploaded archive (replacing the one before), remove it, or promote it --
the champion's :class:`~lineguard.edge.hotswap.ModelSlot` swaps to the challenger's bundle
(pinned to its digest) and the shadow stops. Like a hot swap, all of this lives in memory:
a restart runs the challenger ``station.yaml`` names, if any.

Imports the standard library, numpy and :mod:`lineguard.edge` only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lineguard import LineguardError
from lineguard.edge.bundle import BundleLimits
from lineguard.edge.predictor import REJECT, Prediction, Predictor
from lineguard.edge.signing import Trust
from lineguard.edge.store import ShadowResult, StoreError

if TYPE_CHECKING:
    from lineguard.edge.hotswap import ModelSlot
    from lineguard.edge.store import PredictionRecord, Store

__all__ = ["ArchiveUpload", "ShadowError", "ShadowRunner", "ShadowSlot"]

log = logging.getLogger("lineguard.edge.shadow")

DEFAULT_QUEUE_SIZE = 32
BATCH = 8  # frames the worker decides in one call, at most
# The worker writes its results in one transaction per WRITE_ROWS results or WRITE_S seconds: the store has one
# writer, so every shadow commit is a moment the champion's next record could wait -- few, larger commits keep
# those moments rare (the results are not needed at once; status() counts what is written).
WRITE_ROWS, WRITE_S = 64, 1.0
UPLOAD_PREFIX = "challenger-"
UPLOAD_CHUNK = 1 << 20


class ShadowError(LineguardError):
    """A challenger cannot be installed, promoted or removed as asked; ``reason`` is a short tag."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class _Scored:
    """One compared frame waiting to be written: the result, its PNG (disagreements), what status() counts."""

    result: ShadowResult
    png: bytes | None
    recipe: str | None
    champion: str


@dataclass(frozen=True, slots=True)
class _Frame:
    """What the worker needs of one champion decision."""

    prediction_id: int
    recipe: str | None
    decision: str
    image: np.ndarray


def _lower_priority(nice: int) -> None:
    """Raise this thread's niceness by ``nice`` (Linux: a thread is a task of its own); a no-op elsewhere."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    with contextlib.suppress(OSError, AttributeError, ValueError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + int(nice)))


class ShadowRunner:
    """One challenger scoring the champion's frames off the hot path (see the module docstring).

    ``predictor`` is the challenger, ``store`` the station's :class:`~lineguard.edge.store.Store`
    (the results go to its ``shadow`` table). ``queue_size`` bounds the frames waiting;
    ``nice`` lowers the worker's CPU priority; ``encode`` turns a frame into PNG bytes (the
    station's encoder); ``upload`` is the archive this challenger was installed from, removed
    when the runner stops. Call :meth:`start`, then :meth:`offer` per recorded decision.
    """

    def __init__(
        self,
        predictor: Predictor,
        store: Store,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        nice: int = 10,
        encode: Callable[[np.ndarray], bytes] | None = None,
        clock: Callable[[], float] = time.time,
        upload: Path | None = None,
    ) -> None:
        if not 1 <= int(queue_size) <= 100_000:
            raise ShadowError(
                "bad_settings", f"shadow queue_size must be between 1 and 100,000, got {queue_size}"
            )
        if encode is None:
            from lineguard.edge.station import encode_png

            encode = encode_png
        self.predictor = predictor
        self.bundle = predictor.bundle
        self.store = store
        self.queue_size = int(queue_size)
        self.nice = int(nice)
        self.upload = upload
        self._encode = encode
        self._clock = clock
        self._queue: queue.Queue[_Frame] = queue.Queue(maxsize=self.queue_size)
        self._stop = threading.Event()
        self._flush_now = threading.Event()
        self._idle = threading.Condition()
        self._busy = 0  # frames taken off the queue and not yet written
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        # counters (under self._lock)
        self.offered = 0
        self.skipped = 0  # the queue was full: not compared
        self.compared = 0
        self.agreed = 0
        self.failed = 0  # the challenger could not decide the frame
        self.write_errors = 0
        self.images_kept = 0
        self.last_error: str | None = None
        self._per_recipe: dict[
            str | None, list[int]
        ] = {}  # compared, agreed, champion rejects, challenger rejects
        self._flips = {"accept_to_reject": 0, "reject_to_accept": 0}  # champion -> challenger

    # --- the champion's side (any thread, never blocks) --------------------------------------------

    def offer(self, prediction_id: int, rec: PredictionRecord, image: np.ndarray | None) -> bool:
        """Queue one recorded champion decision for comparison; False (counted) when the queue is full.

        Never blocks and never raises for a full queue: the champion must not wait for the challenger.
        """
        if self._stop.is_set():
            return False
        with self._lock:
            self.offered += 1
            if image is None:
                self.skipped += 1
                return False
        try:
            self._queue.put_nowait(_Frame(int(prediction_id), rec.recipe, rec.decision, image))
        except queue.Full:
            with self._lock:
                self.skipped += 1
            return False
        return True

    # --- the worker --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (once)."""
        with self._lock:
            if self._thread is not None:
                return
            self.started_at = self._clock()
            self._thread = threading.Thread(target=self._loop, name="lineguard-shadow", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def _take(self) -> list[_Frame]:
        """Up to BATCH frames, waiting at most 0.1 s for the first; counted busy until written."""
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        items = [first]
        while len(items) < BATCH:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        with self._idle:
            self._busy += len(items)
        return items

    def _loop(self) -> None:
        _lower_priority(self.nice)
        pending: list[_Scored] = []
        held = 0  # frames taken off the queue whose results are not written yet
        last_write = time.monotonic()
        while True:
            stopping = self._stop.is_set()
            items = self._take() if not (stopping and self._queue.empty()) else []
            held += len(items)
            if items:
                try:
                    pending += self._score(items)
                except Exception as exc:  # whatever goes wrong here must never reach the champion's line
                    with self._lock:
                        self.write_errors += len(items)
                        self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                    log.error("shadow comparison failed: %s", exc)
            idle = self._queue.empty()
            due = (len(pending) >= WRITE_ROWS or time.monotonic() - last_write >= WRITE_S
                   or (idle and (stopping or self._flush_now.is_set())))
            if held and due:
                try:
                    self._write(pending)
                except Exception as exc:  # never let the worker die: count it, go on
                    with self._lock:
                        self.write_errors += len(pending)
                        self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                pending, last_write = [], time.monotonic()
                with self._idle:
                    self._busy -= held
                    self._idle.notify_all()
                held = 0
            if stopping and idle and not held:
                return

    def _decide(self, items: Sequence[_Frame]) -> list[Prediction | None]:
        """The challenger's decisions, one batch call per recipe; a frame it cannot decide is None (counted)."""
        out: list[Prediction | None] = [None] * len(items)
        by_recipe: dict[str | None, list[int]] = {}
        for i, item in enumerate(items):
            by_recipe.setdefault(item.recipe, []).append(i)
        for recipe, idx in by_recipe.items():
            try:
                preds = self.predictor.predict([items[i].image for i in idx], recipe)
                for i, p in zip(idx, preds, strict=True):
                    out[i] = p
                continue
            except LineguardError:
                pass
            for i in idx:  # one bad frame fails its batch: decide each alone
                try:
                    one = self.predictor.predict(items[i].image, recipe)
                    out[i] = one if isinstance(one, Prediction) else None
                except LineguardError as exc:
                    with self._lock:
                        self.failed += 1
                        self.last_error = f"frame {items[i].prediction_id}: {str(exc)[:300]}"
        return out

    def _score(self, items: Sequence[_Frame]) -> list[_Scored]:
        """The challenger's decision of each frame, its PNG when the two disagree (the frame is let go here)."""
        preds = self._decide(items)
        now = self._clock()
        version = self.bundle.version or "unknown"
        out: list[_Scored] = []
        for item, pred in zip(items, preds, strict=True):
            if pred is None:
                continue
            agree = pred.decision == item.decision
            png = None
            if not agree and self.store.wants_shadow_image(item.prediction_id):
                png = self._encode(item.image)
            result = ShadowResult(item.prediction_id, version, pred.score, pred.decision, agree, now)
            out.append(_Scored(result, png, item.recipe, item.decision))
        return out

    def _write(self, scored: Sequence[_Scored]) -> None:
        """Write a batch of results in one store transaction, then count them (what status() reports is stored)."""
        if not scored:
            return
        try:
            written = self.store.record_shadow([(x.result, x.png) for x in scored])
        except StoreError as exc:
            with self._lock:
                self.write_errors += len(scored)
                self.last_error = str(exc)[:400]
            log.error("shadow results not written: %s", exc)
            return
        with self._lock:
            self.images_kept += written["images"]
            for x in scored:
                agree = x.result.agree
                challenger = x.result.decision
                self.compared += 1
                self.agreed += agree
                per = self._per_recipe.setdefault(x.recipe, [0, 0, 0, 0])
                per[0] += 1
                per[1] += agree
                per[2] += x.champion == REJECT
                per[3] += challenger == REJECT
                if not agree:
                    self._flips["accept_to_reject" if challenger == REJECT else "reject_to_accept"] += 1

    def drain(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued frame is compared and written; True when that happened within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        self._flush_now.set()  # write what is compared as soon as the queue is empty, not at the next interval
        try:
            with self._idle:
                while not self._queue.empty() or self._busy:
                    left = deadline - time.monotonic()
                    if left <= 0 or (self._thread is None or not self._thread.is_alive()):
                        return self._queue.empty() and not self._busy
                    self._idle.wait(min(left, 0.05))
            return True
        finally:
            self._flush_now.clear()

    def stop(self, timeout_s: float = 2.0) -> dict[str, Any]:
        """Stop taking frames, compare those already queued for up to ``timeout_s`` (the rest are skipped),
        end the worker and remove the uploaded archive; returns the final :meth:`status`."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
        dropped = 0
        while True:
            try:
                self._queue.get_nowait()
                dropped += 1
            except queue.Empty:
                break
        with self._lock:
            self.skipped += dropped
            self.stopped_at = self.stopped_at or self._clock()
        if self.upload is not None:
            with contextlib.suppress(OSError):
                self.upload.unlink()
        return self.status()

    # --- what it found -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Frames compared, agreement overall and per recipe, disagreements (and which way), skipped, the challenger.

        Counted since this challenger started (the store's ``shadow`` table keeps every frame).
        ``reject_rate`` compares the two models on the same frames; ``flips`` says which way
        they disagree: ``accept_to_reject`` frames the champion passed and the challenger
        would reject, ``reject_to_accept`` the other way.
        """
        b = self.bundle
        with self._lock:
            n, k = self.compared, self.agreed
            per = []
            for recipe in sorted(self._per_recipe, key=lambda r: (r is None, r or "")):
                c, a, rc, rx = self._per_recipe[recipe]
                per.append(
                    {
                        "recipe": recipe,
                        "frames_compared": c,
                        "agreement": a / c if c else None,
                        "disagreements": c - a,
                        "reject_rate": {
                            "champion": rc / c if c else None,
                            "challenger": rx / c if c else None,
                        },
                    }
                )
            champion_rejects = sum(v[2] for v in self._per_recipe.values())
            challenger_rejects = sum(v[3] for v in self._per_recipe.values())
            return {
                "running": self.running,
                "challenger": {
                    "name": b.name,
                    "version": b.version,
                    "digest": b.digest,
                    "signed_by": b.signed_by,
                    "source": b.source,
                },
                "since": self.started_at,
                "stopped_at": self.stopped_at,
                "frames_offered": self.offered,
                "frames_compared": n,
                "agreement": k / n if n else None,
                "disagreements": n - k,
                "flips": dict(self._flips),
                "reject_rate": {
                    "champion": champion_rejects / n if n else None,
                    "challenger": challenger_rejects / n if n else None,
                },
                "per_recipe": per,
                "skipped": self.skipped,
                "failed": self.failed,
                "write_errors": self.write_errors,
                "images_kept": self.images_kept,
                "queue": {"size": self.queue_size, "depth": self._queue.qsize()},
                "last_error": self.last_error,
            }


class ArchiveUpload:
    """An uploaded bundle archive written to disk as it arrives, bounded by ``max_bytes``.

    The bytes go to a temp file in ``folder``; :meth:`finish` renames it to
    ``challenger-<sha256>.tar.gz`` and returns that path; :meth:`abort` removes it. Nothing is
    held in memory but the chunk being written.
    """

    def __init__(self, folder: Path, max_bytes: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.max_bytes = int(max_bytes)
        self.size = 0
        self._digest = hashlib.sha256()
        fd, self._tmp = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=folder)
        self._file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        """Append one chunk; ShadowError ``too_large`` at the first byte over the limit."""
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise ShadowError(
                "too_large",
                f"the uploaded bundle is over the limit of {self.max_bytes:,} bytes; "
                "copy it to the station and PUT its path instead",
            )
        self._digest.update(chunk)
        self._file.write(chunk)

    def finish(self) -> Path:
        """The archive under its final name (ShadowError ``empty`` for an empty upload)."""
        self._file.close()
        if self.size == 0:
            self.abort()
            raise ShadowError("empty", "the upload is empty; send the bundle's .tar.gz as the body")
        final = self.folder / f"{UPLOAD_PREFIX}{self._digest.hexdigest()[:32]}.tar.gz"
        os.replace(self._tmp, final)
        return final

    def abort(self) -> None:
        """Remove the partial file (idempotent)."""
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)


class ShadowSlot:
    """The station's place for at most one challenger: install, replace, remove, promote (module docstring).

    ``store`` receives the results; ``trust`` and ``limits`` are the station's bundle settings
    (a challenger is verified exactly like a champion); ``upload_dir`` is where an uploaded
    archive is kept while its challenger runs. ``enabled=False`` refuses every install.
    The recorder calls :meth:`offer` after each recorded decision.
    """

    def __init__(
        self,
        store: Store,
        *,
        upload_dir: str | Path,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        threads: int = 1,
        nice: int = 10,
        enabled: bool = True,
        trust: Trust | None = None,
        limits: BundleLimits | None = None,
        encode: Callable[[np.ndarray], bytes] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.upload_dir = Path(upload_dir)
        self.queue_size = int(queue_size)
        self.threads = int(threads)
        self.nice = int(nice)
        self.enabled = bool(enabled)
        self.trust = trust or Trust()
        self.limits = limits or BundleLimits()
        self._encode = encode
        self._clock = clock
        self._runner: ShadowRunner | None = None
        self._lock = threading.Lock()  # one install / promote / remove at a time
        self.last_error: str | None = None
        self.last: dict[str, Any] | None = None  # the final status of the challenger before this one

    @property
    def runner(self) -> ShadowRunner | None:
        """The running challenger, or None."""
        return self._runner

    def offer(self, prediction_id: int, rec: PredictionRecord, image: np.ndarray | None) -> None:
        """Hand one recorded decision to the running challenger, if any (never blocks)."""
        runner = self._runner
        if runner is not None:
            runner.offer(prediction_id, rec, image)

    def status(self) -> dict[str, Any]:
        """The running challenger's :meth:`ShadowRunner.status`, or why none runs (and how the last one ended)."""
        runner = self._runner
        if runner is not None:
            return {"enabled": self.enabled, **runner.status()}
        return {
            "enabled": self.enabled,
            "running": False,
            "last_error": self.last_error,
            "previous": self.last,
            "reason": "shadow mode is off on this station (shadow.enabled: false)"
            if not self.enabled
            else "no challenger installed: PUT /v1/shadow with a bundle path or archive",
        }

    # --- changing it -------------------------------------------------------------------------------

    def install(
        self, path: str | Path, *, expected_digest: str | None = None, upload: Path | None = None
    ) -> dict[str, Any]:
        """Load, verify and warm the bundle at ``path`` and start it in shadow (replacing the running one).

        Raises :class:`ShadowError` (``shadow_disabled``, ``shadow_refused``, ``shadow_busy``); the
        challenger running before keeps running when the new one is refused.
        """
        from lineguard.edge.hotswap import SwapError, prepare_predictor

        if not self.enabled:
            raise ShadowError(
                "shadow_disabled",
                "shadow mode is off on this station; set shadow.enabled: true in "
                "station.yaml to run a challenger",
            )
        if not self._lock.acquire(blocking=False):
            raise ShadowError(
                "shadow_busy", "another shadow change is in progress; try again when it has finished"
            )
        try:
            try:
                loaded = prepare_predictor(
                    path,
                    trust=self.trust,
                    limits=self.limits,
                    threads=self.threads,
                    expected_digest=expected_digest,
                )
            except SwapError as exc:
                self.last_error = f"challenger {str(exc).removeprefix('model refused: ')}"
                if upload is not None:
                    with contextlib.suppress(OSError):
                        upload.unlink()
                raise ShadowError("shadow_refused", self.last_error) from None
            runner = ShadowRunner(
                loaded.predictor,
                self.store,
                queue_size=self.queue_size,
                nice=self.nice,
                encode=self._encode,
                clock=self._clock,
                upload=upload,
            )
            runner.start()
            old, self._runner = self._runner, runner
            self.last_error = None
            if old is not None:
                if old.upload is not None and old.upload == upload:
                    old.upload = None  # the same archive uploaded again: it is the new challenger's now
                self.last = old.stop()
            b = runner.bundle
            log.info("challenger %s %s runs in shadow (from %s)", b.name, b.version, b.source)
            return self.status()
        finally:
            self._lock.release()

    def install_upload(
        self, chunks: Any, *, max_bytes: int, expected_digest: str | None = None
    ) -> dict[str, Any]:
        """Write an uploaded ``.tar.gz`` bundle (an iterable of byte chunks) to ``upload_dir``, bounded by
        ``max_bytes``, then :meth:`install` it. The file is named by its sha256 and removed with its challenger."""
        if not self.enabled:
            raise ShadowError(
                "shadow_disabled",
                "shadow mode is off on this station; set shadow.enabled: true in "
                "station.yaml to run a challenger",
            )
        path = self.save_upload(chunks, max_bytes=max_bytes)
        return self.install(path, expected_digest=expected_digest, upload=path)

    def save_upload(self, chunks: Any, *, max_bytes: int) -> Path:
        """The uploaded archive on disk (temp name, then renamed to ``challenger-<sha256>.tar.gz``)."""
        upload = self.begin_upload(max_bytes)
        try:
            for chunk in chunks:
                upload.write(chunk)
            return upload.finish()
        except BaseException:
            upload.abort()
            raise

    def begin_upload(self, max_bytes: int) -> ArchiveUpload:
        """An :class:`ArchiveUpload` into ``upload_dir``: write the chunks as they arrive, then ``finish()``."""
        return ArchiveUpload(self.upload_dir, max_bytes)

    def remove(self) -> dict[str, Any]:
        """Stop the running challenger; returns its final status. ShadowError ``no_challenger`` when none runs."""
        with self._lock:
            runner, self._runner = self._runner, None
            if runner is None:
                raise ShadowError("no_challenger", "no challenger runs in shadow on this station")
            self.last = runner.stop()
            return {"enabled": self.enabled, **self.last}

    def promote(self, slot: ModelSlot, *, drain_s: float = 2.0) -> dict[str, Any]:
        """Make the challenger the champion through the slot's hot swap (pinned to its digest); the shadow stops.

        The frames already queued are compared first (up to ``drain_s``). When the swap is refused
        or rolled back the champion keeps serving and the challenger keeps running in shadow
        (ShadowError ``promote_refused``; ``swap_in_progress`` while another swap runs).
        Returns ``{"model": the new champion's info, "shadow": the challenger's final status}``.
        """
        from lineguard.edge.hotswap import SwapBusy, SwapError

        with self._lock:
            runner = self._runner
            if runner is None:
                raise ShadowError(
                    "no_challenger", "no challenger runs in shadow on this station; PUT /v1/shadow first"
                )
            runner.drain(drain_s)
            b = runner.bundle
            upload, runner.upload = (
                runner.upload,
                None,
            )  # the archive is the swap's source: kept until it loaded
            try:
                info = slot.swap(b.source, expected_digest=b.digest or None)
            except SwapBusy as exc:
                runner.upload = upload
                raise ShadowError("swap_in_progress", str(exc)) from None
            except SwapError as exc:
                runner.upload = upload
                raise ShadowError(
                    "promote_refused",
                    f"promotion refused, the champion keeps serving and the "
                    f"challenger stays in shadow: {exc}",
                ) from None
            self._runner = None
            self.last = runner.stop()
            if upload is not None:
                with contextlib.suppress(OSError):
                    upload.unlink()
            log.info("challenger %s %s promoted to champion", b.name, b.version)
            return {"model": info, "shadow": self.last}

    def close(self) -> None:
        """Stop the running challenger, if any (the station's close)."""
        with self._lock:
            runner, self._runner = self._runner, None
        if runner is not None:
            self.last = runner.stop()
