"""Where the edge loop's frames come from: video files, image folders, cameras, stream URLs, API pushes.

:func:`open_source` turns a ``--source`` string into a :class:`FrameSource`; every source
yields :class:`Frame` records (decoded HxWx3 uint8 RGB, a frame id unique per station,
the capture time and a source label) and reports what it did in ``stats``.

The drop policy, per kind (stated, never hidden):

- **Files never drop** (``video``, ``folder``): a reader thread decodes ahead into a
  bounded queue and waits when it is full, so a slow model slows the reading down
  (back-pressure); every frame of the file is decided.
- **Live sources keep the newest frame** (``camera``, ``url``): a reader thread reads the
  camera as fast as it delivers and keeps one frame -- the newest; a frame replaced
  before the loop took it is dropped and counted (``frames_dropped``; the frame ids
  keep counting, so the gaps show where). ``push`` (frames pushed over the API) keeps a
  bounded queue (``capacity``) and drops the *oldest* when it is full, also counted.

A live source whose camera stops delivering (read failures, or no frame for
``frame_timeout_s``) is marked ``disconnected`` within that time and reconnected with a
capped exponential backoff (``reconnect_min_s`` doubling up to ``reconnect_max_s``), in the
same process (R8). How a camera is opened is injectable (``opener``), so a test can play
a camera that dies and comes back.

An image folder is decided file by file, each file once, also across restarts: the
decided files are remembered in a small ledger file (one JSON line per file, appended;
rewritten atomically when it is compacted at start). A file is read only once it has
settled (not modified for ``settle_s``); names of files still being written by the usual
tools (``.tmp``, ``.part``, a leading dot) are skipped until renamed.

Imports numpy, the standard library and :mod:`lineguard.preprocess` (Pillow); OpenCV only
inside the sources that need it.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lineguard import LineguardError

__all__ = [
    "CameraSource",
    "Capture",
    "CaptureOpener",
    "FolderSource",
    "Frame",
    "FrameSource",
    "PushSource",
    "SourceError",
    "UrlSource",
    "VideoFileSource",
    "open_source",
]

log = logging.getLogger("lineguard.edge.sources")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", ".download")
URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
_WAIT_S = 0.05  # how often a blocked wait re-checks the stop event
_IDLE_S = 0.1  # a live source yields an empty batch after this long without a frame (callers check deadlines)


class SourceError(LineguardError):
    """A source that cannot be opened or read, or a bad source option; the message names it."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame for the loop: ``image`` HxWx3 uint8 RGB; ``time`` unix seconds when captured or received."""

    image: np.ndarray
    frame_id: str
    time: float
    source: str


class FrameSource(Protocol):
    """What the edge loop reads from. ``frames``/``batches`` end when ``stop`` is set or the source ends."""

    kind: str  # "video" | "folder" | "camera" | "url" | "push"
    drops_frames: bool  # live sources keep the newest frame and count drops; files never drop

    def frames(self, stop: threading.Event) -> Iterator[Frame]: ...

    def batches(self, stop: threading.Event, max_n: int) -> Iterator[list[Frame]]:
        """Lists of up to max_n frames, as many as are ready without waiting for more.

        A live source yields an empty list when no frame came for a moment (0.1 s), so
        the caller can keep its own deadlines; a file source only yields frames.
        """
        ...

    def ack(self, frames: Sequence[Frame]) -> None:
        """The loop has recorded these frames (a folder source remembers them as decided)."""
        ...

    def close(self) -> None: ...

    @property
    def stats(self) -> dict[str, Any]: ...


class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` a source uses; a test passes its own."""

    def isOpened(self) -> bool: ...

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


CaptureOpener = Callable[[], Capture]


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise SourceError("video, camera and stream sources need OpenCV: pip install 'lineguard[edge]'") from None
    return cv2


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR (or grey, or BGRA) uint8 frame -> HxWx3 uint8 RGB."""
    cv2 = _cv2()
    if image.ndim == 2:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2RGB))
    if image.shape[2] == 4:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGRA2RGB))
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))


def _wait(seconds: float, *events: threading.Event) -> None:
    """Sleep ``seconds`` or until any of ``events`` is set."""
    end = time.monotonic() + seconds
    while not any(e.is_set() for e in events):
        left = end - time.monotonic()
        if left <= 0:
            return
        events[0].wait(min(left, _WAIT_S))


class _Source:
    """Shared parts: ``frames`` from ``batches``, no-op ``ack``/``close``, the common stats."""

    kind = "source"
    drops_frames = False

    def __init__(self, label: str, clock: Callable[[], float]) -> None:
        self.label = label
        self._clock = clock
        self._start_ms = int(clock() * 1000)
        self._seq = 0
        self.frames_read = 0
        self.frames_dropped = 0
        self.reconnects = 0
        self.disconnects = 0
        self.state = "idle"
        self.last_error: str | None = None
        self._running = False

    def _next_id(self) -> str:
        self._seq += 1
        return f"{self._start_ms}-{self._seq}"

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        for batch in self.batches(stop, 1):
            yield from batch

    def batches(self, stop: threading.Event, max_n: int) -> Iterator[list[Frame]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _claim(self) -> None:
        if self._running:
            raise SourceError(f"source '{self.label}' is already being read; one loop per source")
        self._running = True

    def ack(self, frames: Sequence[Frame]) -> None:
        return None

    def close(self) -> None:
        return None

    @property
    def queue_depth(self) -> int:
        return 0

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    @property
    def stats(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "source": self.label, "state": self.state, "connected": self.connected,
            "frames_read": self.frames_read, "frames_dropped": self.frames_dropped, "reconnects": self.reconnects,
            "disconnects": self.disconnects, "last_error": self.last_error, "queue_depth": self.queue_depth,
        }


class _Prefetch(_Source):
    """A file source: a reader thread fills a bounded queue and blocks when it is full (back-pressure)."""

    _END = object()

    def __init__(self, label: str, clock: Callable[[], float], prefetch: int) -> None:
        super().__init__(label, clock)
        if prefetch < 1:
            raise SourceError(f"prefetch must be >= 1, got {prefetch}")
        self._q: queue.Queue[Any] = queue.Queue(maxsize=prefetch)
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def queue_depth(self) -> int:
        return self._q.qsize()

    def _put(self, item: Any, stop: threading.Event) -> bool:
        """Queue ``item``, waiting while the queue is full; False when asked to stop first."""
        while not (stop.is_set() or self._halt.is_set()):
            try:
                self._q.put(item, timeout=_WAIT_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, stop: threading.Event) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _reader(self, stop: threading.Event) -> None:
        try:
            self._produce(stop)
        except Exception as exc:  # the consumer raises it as a SourceError naming the source
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._put(SourceError(f"source '{self.label}' failed: {self.last_error}"), stop)

    def batches(self, stop: threading.Event, max_n: int) -> Iterator[list[Frame]]:
        self._claim()
        self._halt.clear()
        self._thread = threading.Thread(target=self._reader, args=(stop,), name=f"lineguard-{self.kind}-reader",
                                        daemon=True)
        self._thread.start()
        ended = False
        try:
            while not ended and not stop.is_set():
                try:
                    item = self._q.get(timeout=_WAIT_S)
                except queue.Empty:
                    continue
                if item is self._END:
                    break
                if isinstance(item, SourceError):
                    raise item
                batch, error = [item], None
                while len(batch) < max_n:
                    try:
                        nxt = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is self._END:
                        ended = True
                        break
                    if isinstance(nxt, SourceError):
                        error = nxt
                        break
                    batch.append(nxt)
                yield batch
                if error is not None:
                    raise error
        finally:
            self._halt.set()
            if self._thread is not None:
                self._thread.join(timeout=5.0)
            self._running = False
            if self.state not in ("ended", "failed"):
                self.state = "stopped"


class VideoFileSource(_Prefetch):
    """Every frame of a video file, in order, never dropped (the reader waits for the loop).

    ``loop=True`` starts again at the end (soak tests); ``realtime=True`` paces the reading
    to the file's frame rate instead of as fast as the loop decides.
    """

    kind = "video"
    drops_frames = False

    def __init__(self, path: str | Path, *, loop: bool = False, realtime: bool = False, prefetch: int = 32,
                 opener: CaptureOpener | None = None, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        super().__init__(f"video:{self.path}", clock, prefetch)
        self.loop, self.realtime = loop, realtime
        self._opener = opener or self._open_file
        self.position = 0
        self.passes = 0
        self.fps = 0.0
        if opener is None:
            if not self.path.is_file():
                raise SourceError(f"video '{self.path}' does not exist or is not a file")
            cap = self._opener()
            ok = cap.isOpened()
            self.fps = float(self._prop(cap, "CAP_PROP_FPS"))
            self.frame_count = int(self._prop(cap, "CAP_PROP_FRAME_COUNT"))
            cap.release()
            if not ok:
                raise SourceError(f"'{self.path}' is not a video OpenCV can read (expected .avi, .mp4, .mkv, ...)")
        else:
            self.frame_count = 0

    def _open_file(self) -> Capture:
        cv2 = _cv2()
        return cv2.VideoCapture(str(self.path))  # type: ignore[no-any-return]

    @staticmethod
    def _prop(cap: Capture, name: str) -> float:
        get = getattr(cap, "get", None)
        if get is None:
            return 0.0
        try:
            value = float(get(getattr(_cv2(), name)))
        except Exception:
            return 0.0
        return value if np.isfinite(value) and value > 0 else 0.0

    def _produce(self, stop: threading.Event) -> None:
        self.state = "connected"
        period = 1.0 / self.fps if self.realtime and self.fps > 0 else 0.0
        t_next = time.monotonic()
        while not (stop.is_set() or self._halt.is_set()):
            cap = self._opener()
            if not cap.isOpened():
                raise SourceError(f"cannot open video '{self.path}'")
            self.passes += 1
            self.position = 0
            try:
                while not (stop.is_set() or self._halt.is_set()):
                    ok, img = cap.read()
                    if not ok or img is None:
                        break
                    if period:
                        t_next += period
                        delay = t_next - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                    frame = Frame(_to_rgb(img), self._next_id(), self._clock(), f"{self.label}#{self.position}")
                    self.position += 1
                    self.frames_read += 1
                    if not self._put(frame, stop):
                        return
            finally:
                cap.release()
            if not self.loop or self.position == 0:
                break
        if not (stop.is_set() or self._halt.is_set()):
            self.state = "ended"
            self._put(self._END, stop)

    @property
    def stats(self) -> dict[str, Any]:
        return {**super().stats, "position": self.position, "passes": self.passes, "frame_count": self.frame_count,
                "fps": self.fps}


class FolderSource(_Prefetch):
    """Image files in a folder, oldest first, each decided once -- also across restarts (``ledger``).

    ``watch=True`` keeps looking for new files every ``poll_s`` until stopped; otherwise
    the source ends once every settled file has been read. A file is read once it has
    not changed for ``settle_s`` (its writer is done). Files that cannot be decoded are
    logged, counted (``files_unreadable``) and remembered as done, never retried forever.
    ``ledger`` (a file path) is where decided files are remembered; without one they are
    remembered in memory only (the store's idempotency key still stops a second record:
    a file's frame id is derived from its name, size and modification time).
    """

    kind = "folder"
    drops_frames = False

    def __init__(self, path: str | Path, *, watch: bool = False, settle_s: float = 0.5, poll_s: float = 0.25,
                 recursive: bool = False, ledger: str | Path | None = None, prefetch: int = 16,
                 max_bytes: int | None = None, max_pixels: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        from lineguard.edge.predictor import MAX_IMAGE_BYTES
        from lineguard.preprocess import DEFAULT_MAX_PIXELS

        self.path = Path(path)
        if not self.path.is_dir():
            raise SourceError(f"image folder '{self.path}' does not exist or is not a folder")
        super().__init__(f"folder:{self.path}", clock, prefetch)
        if settle_s < 0 or poll_s <= 0:
            raise SourceError(f"settle_s must be >= 0 and poll_s > 0, got {settle_s} and {poll_s}")
        self.watch, self.settle_s, self.poll_s, self.recursive = watch, settle_s, poll_s, recursive
        self.max_bytes = max_bytes or MAX_IMAGE_BYTES
        self.max_pixels = max_pixels or DEFAULT_MAX_PIXELS
        self.ledger_path = Path(ledger) if ledger is not None else None
        self.files_unreadable = 0
        self.files_skipped_seen = 0
        self._seen: set[str] = set()
        self._inflight: dict[str, str] = {}  # frame_id -> ledger key, read but not yet recorded
        self._inflight_keys: set[str] = set()
        self._lock = threading.Lock()
        self._ledger_fh: Any = None

    # --- the ledger --------------------------------------------------------------------------

    def _open_ledger(self) -> None:
        if self.ledger_path is None or self._ledger_fh is not None:
            return
        keys: list[str] = []
        if self.ledger_path.exists():
            text = self.ledger_path.read_text(encoding="utf-8", errors="replace")
            lines = text.split("\n")
            for line in lines[:-1]:  # the last piece has no newline: empty, or a torn write
                try:
                    key = json.loads(line)
                except ValueError:
                    continue
                if isinstance(key, str):
                    keys.append(key)
        current = {self._key(p, st) for p, st in self._scan()}
        kept = sorted(set(keys) & current)
        self._seen = set(kept)
        # Compact: keep only files that are still there unchanged; atomic (temp name, then rename).
        from lineguard import storage

        storage.write_text(str(self.ledger_path), "".join(json.dumps(k) + "\n" for k in kept))
        self._ledger_fh = open(self.ledger_path, "a", encoding="utf-8")  # noqa: SIM115 (held open; closed in close())

    def _remember(self, keys: Sequence[str]) -> None:
        with self._lock:
            self._seen.update(keys)
            if self._ledger_fh is not None and keys:
                # One write per batch: a line is whole or, after a crash mid-write, ignored on the next start.
                self._ledger_fh.write("".join(json.dumps(k) + "\n" for k in keys))
                self._ledger_fh.flush()

    def ack(self, frames: Sequence[Frame]) -> None:
        with self._lock:
            keys = [k for k in (self._inflight.pop(f.frame_id, None) for f in frames) if k is not None]
            self._inflight_keys.difference_update(keys)
        self._remember(keys)

    def close(self) -> None:
        with self._lock:
            if self._ledger_fh is not None:
                self._ledger_fh.close()
                self._ledger_fh = None

    # --- scanning ----------------------------------------------------------------------------

    def _key(self, path: Path, st: os.stat_result) -> str:
        rel = os.path.relpath(path, self.path)
        return f"{rel}|{st.st_size}|{st.st_mtime_ns}"

    def _scan(self) -> list[tuple[Path, os.stat_result]]:
        out: list[tuple[Path, os.stat_result]] = []
        stack = [self.path]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError as exc:
                self.last_error = f"cannot list '{folder}': {exc.strerror or exc}"
                continue
            for e in entries:
                name = e.name
                if name.startswith((".", "~")):
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        if self.recursive:
                            stack.append(Path(e.path))
                        continue
                    lower = name.lower()
                    if lower.endswith(PARTIAL_SUFFIXES) or not lower.endswith(IMAGE_SUFFIXES):
                        continue
                    if not e.is_file():
                        continue
                    out.append((Path(e.path), e.stat()))
                except OSError:
                    continue
        return out

    def _produce(self, stop: threading.Event) -> None:
        from lineguard.edge.predictor import ItemError, read_image_file
        from lineguard.preprocess import ImageDecodeError, decode_image

        self._open_ledger()
        self.state = "connected"
        pending: dict[str, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, first seen, monotonic)
        while not (stop.is_set() or self._halt.is_set()):
            now_wall, now_mono = time.time(), time.monotonic()
            ready: list[tuple[int, str, Path, str]] = []
            for path, st in self._scan():
                key = self._key(path, st)
                with self._lock:
                    if key in self._seen or key in self._inflight_keys:
                        continue
                sig = (st.st_size, st.st_mtime_ns)
                prev = pending.get(str(path))
                quiet = now_wall - st.st_mtime_ns / 1e9 >= self.settle_s
                stable = prev is not None and prev[:2] == sig and now_mono - prev[2] >= self.settle_s
                if quiet or stable:
                    pending.pop(str(path), None)
                    ready.append((st.st_mtime_ns, path.name, path, key))
                elif prev is None or prev[:2] != sig:
                    pending[str(path)] = (*sig, now_mono)
            ready.sort()
            for _, _, path, key in ready:
                if stop.is_set() or self._halt.is_set():
                    return
                try:
                    image = decode_image(read_image_file(path, self.max_bytes), self.max_pixels)
                except (ItemError, ImageDecodeError) as exc:
                    self.files_unreadable += 1
                    self.last_error = f"{path}: {exc}"
                    log.warning("skipping unreadable image %s: %s", path, exc)
                    self._remember([key])
                    continue
                frame_id = "f" + hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:20]
                with self._lock:
                    self._inflight[frame_id] = key
                    self._inflight_keys.add(key)
                self.frames_read += 1
                if not self._put(Frame(image, frame_id, self._clock(), f"file:{path}"), stop):
                    return
            # A file that vanished before it settled is forgotten.
            if pending:
                alive = {str(p) for p, _ in self._scan()}
                for p in [p for p in pending if p not in alive]:
                    pending.pop(p)
            if not self.watch and not pending and not ready:
                self.state = "ended"
                self._put(self._END, stop)
                return
            if not ready:
                _wait(self.poll_s, stop, self._halt)

    @property
    def stats(self) -> dict[str, Any]:
        return {**super().stats, "files_unreadable": self.files_unreadable, "files_seen": len(self._seen),
                "watch": self.watch}


class _LiveSource(_Source):
    """A camera or stream: the newest frame only, drops counted, disconnects detected and reconnected.

    A supervisor thread opens the capture (``opener``) and runs a reader thread per
    connection. The connection is declared lost when a read fails ``max_read_failures``
    times in a row or no frame arrives for ``frame_timeout_s`` -- even if the read call
    itself hangs: the hung reader is abandoned (it releases its capture if it ever returns)
    and a new connection is opened. Reconnect attempts back off from ``reconnect_min_s``,
    doubling, capped at ``reconnect_max_s``. ``monotonic`` is the clock the silence is
    measured with (a test passes its own).
    """

    drops_frames = True

    def __init__(self, label: str, opener: CaptureOpener, *, frame_timeout_s: float = 1.0,
                 reconnect_min_s: float = 0.1, reconnect_max_s: float = 2.0, max_read_failures: int = 3,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(label, clock)
        self._mono = monotonic
        if frame_timeout_s <= 0 or reconnect_min_s <= 0 or reconnect_max_s < reconnect_min_s:
            raise SourceError("frame_timeout_s and reconnect_min_s must be > 0 and reconnect_max_s >= reconnect_min_s")
        self._opener = opener
        self.frame_timeout_s = frame_timeout_s
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self.max_read_failures = max(1, max_read_failures)
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._last_frame_mono = 0.0
        self._halt = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.open_failures = 0
        self.disconnected_at: float | None = None
        self.last_detect_s: float | None = None  # how long the last disconnect took to notice

    def _publish(self, image: np.ndarray) -> None:
        frame = Frame(_to_rgb(image), self._next_id(), self._clock(), self.label)
        with self._cond:
            if self._latest is not None:
                self.frames_dropped += 1
            self._latest = frame
            self.frames_read += 1
            self._last_frame_mono = self._mono()
            self._cond.notify_all()

    def _read_loop(self, cap: Capture, gone: threading.Event, ended: threading.Event) -> None:
        failures = 0
        try:
            while not gone.is_set():
                try:
                    ok, img = cap.read()
                except Exception as exc:
                    ok, img = False, None
                    self.last_error = f"read raised {type(exc).__name__}: {exc}"
                if gone.is_set():
                    break
                if not ok or img is None:
                    failures += 1
                    if failures >= self.max_read_failures:
                        self.last_error = self.last_error or f"{failures} failed reads in a row"
                        break
                    continue
                failures = 0
                self._publish(img)
        finally:
            ended.set()
            with contextlib.suppress(Exception):  # a dead camera may fail to release; nothing more to do with it
                cap.release()

    def _open(self) -> Capture | None:
        try:
            cap = self._opener()
        except Exception as exc:
            self.last_error = f"open raised {type(exc).__name__}: {exc}"
            return None
        if not cap.isOpened():
            self.last_error = f"cannot open {self.label}"
            with contextlib.suppress(Exception):
                cap.release()
            return None
        return cap

    def _supervise(self, stop: threading.Event) -> None:
        backoff = self.reconnect_min_s
        first = True
        while not (stop.is_set() or self._halt.is_set()):
            self.state = "connecting" if first else "reconnecting"
            cap = self._open()
            if cap is None:
                self.open_failures += 1
                _wait(backoff, stop, self._halt)
                backoff = min(backoff * 2.0, self.reconnect_max_s)
                continue
            if not first:
                self.reconnects += 1
                log.warning("%s reconnected after %.1f s", self.label,
                            self._clock() - (self.disconnected_at or self._clock()))
            first = False
            backoff = self.reconnect_min_s
            self.last_error = None
            self._last_frame_mono = self._mono()
            self.state = "connected"
            gone, ended = threading.Event(), threading.Event()
            reader = threading.Thread(target=self._read_loop, args=(cap, gone, ended),
                                      name=f"lineguard-{self.kind}-read", daemon=True)
            reader.start()
            reason = ""
            while not (stop.is_set() or self._halt.is_set()):
                if ended.wait(_WAIT_S):
                    reason = self.last_error or "the stream ended"
                    break
                silent = self._mono() - self._last_frame_mono
                if silent > self.frame_timeout_s:
                    reason = f"no frame for {silent:.1f} s"
                    break
            gone.set()
            if stop.is_set() or self._halt.is_set():
                reader.join(timeout=1.0)
                break
            self.disconnects += 1
            self.disconnected_at = self._clock()
            self.last_detect_s = self._mono() - self._last_frame_mono
            self.last_error = reason
            self.state = "disconnected"
            log.warning("%s disconnected (%s); reconnecting", self.label, reason)
            reader.join(timeout=0.2)  # a hung read is abandoned; it releases its capture when it returns
        self.state = "stopped"

    def batches(self, stop: threading.Event, max_n: int) -> Iterator[list[Frame]]:
        """The newest frame each time (batches of one): a live frame is decided as soon as it is taken."""
        self._claim()
        self._halt.clear()
        self._supervisor = threading.Thread(target=self._supervise, args=(stop,),
                                            name=f"lineguard-{self.kind}-supervisor", daemon=True)
        self._supervisor.start()
        try:
            while not stop.is_set():
                with self._cond:
                    if self._latest is None:
                        self._cond.wait(_IDLE_S)
                    frame, self._latest = self._latest, None
                yield [] if frame is None else [frame]
        finally:
            self._halt.set()
            self._supervisor.join(timeout=5.0)
            self._running = False

    @property
    def queue_depth(self) -> int:
        return 0 if self._latest is None else 1

    @property
    def stats(self) -> dict[str, Any]:
        return {**super().stats, "open_failures": self.open_failures, "frame_timeout_s": self.frame_timeout_s,
                "last_detect_s": self.last_detect_s}


class CameraSource(_LiveSource):
    """A camera by index (``cv2.VideoCapture(index)``); ``width``/``height``/``fps`` are asked of it if given."""

    kind = "camera"

    def __init__(self, index: int, *, width: int | None = None, height: int | None = None, fps: float | None = None,
                 opener: CaptureOpener | None = None, **options: Any) -> None:
        self.index = index
        self._want = (width, height, fps)
        super().__init__(f"camera:{index}", opener or self._open_camera, **options)

    def _open_camera(self) -> Capture:
        cv2 = _cv2()
        cap = cv2.VideoCapture(self.index)
        width, height, fps = self._want
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height),
                            (cv2.CAP_PROP_FPS, fps)):
            if value:
                cap.set(prop, float(value))
        return cap  # type: ignore[no-any-return]


class UrlSource(_LiveSource):
    """An RTSP or HTTP MJPEG stream through OpenCV's FFmpeg backend, with open and read timeouts."""

    kind = "url"

    def __init__(self, url: str, *, open_timeout_s: float = 2.0, read_timeout_s: float = 1.0,
                 opener: CaptureOpener | None = None, **options: Any) -> None:
        self.url = url
        self.open_timeout_s, self.read_timeout_s = open_timeout_s, read_timeout_s
        super().__init__(f"url:{_redact(url)}", opener or self._open_url, **options)

    def _open_url(self) -> Capture:
        cv2 = _cv2()
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout_s * 1000)]
        return cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)  # type: ignore[no-any-return]


def _redact(url: str) -> str:
    """A URL without its password (``rtsp://user:secret@cam`` -> ``rtsp://user:***@cam``)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"


class PushSource(_Source):
    """Frames pushed by the API (:meth:`push`): a bounded queue that drops the OLDEST frame when full (counted)."""

    kind = "push"
    drops_frames = True

    def __init__(self, *, capacity: int = 8, clock: Callable[[], float] = time.time) -> None:
        super().__init__("api", clock)
        if capacity < 1:
            raise SourceError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._q: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self.state = "connected"

    def push(self, image: np.ndarray) -> Frame:
        """Queue a decoded HxWx3 uint8 RGB image for the loop; returns its frame (id, time)."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            shape = getattr(image, "shape", None)
            raise SourceError(f"a pushed frame must be an HxWx3 uint8 RGB array, got {shape} {getattr(image, 'dtype', type(image))}")
        with self._cond:
            frame = Frame(image, f"{self._start_ms}-p{self._seq + 1}", self._clock(), "api")
            self._seq += 1
            if len(self._q) >= self.capacity:
                self._q.popleft()
                self.frames_dropped += 1
            self._q.append(frame)
            self.frames_read += 1
            self._cond.notify_all()
        return frame

    def batches(self, stop: threading.Event, max_n: int) -> Iterator[list[Frame]]:
        self._claim()
        try:
            while not stop.is_set():
                with self._cond:
                    if not self._q:
                        self._cond.wait(_IDLE_S)
                    batch = [self._q.popleft() for _ in range(min(max_n, len(self._q)))]
                yield batch
        finally:
            self._running = False

    @property
    def queue_depth(self) -> int:
        return len(self._q)


_OPTIONS: dict[str, tuple[str, ...]] = {
    "video": ("loop", "realtime", "prefetch", "opener", "clock"),
    "folder": ("watch", "settle_s", "poll_s", "recursive", "ledger", "prefetch", "max_bytes", "max_pixels", "clock"),
    "camera": ("width", "height", "fps", "opener", "frame_timeout_s", "reconnect_min_s", "reconnect_max_s",
               "max_read_failures", "clock", "monotonic"),
    "url": ("open_timeout_s", "read_timeout_s", "opener", "frame_timeout_s", "reconnect_min_s", "reconnect_max_s",
            "max_read_failures", "clock", "monotonic"),
    "push": ("capacity", "clock"),
}


def source_kind(spec: str) -> str:
    """Which kind of source a ``--source`` string names (without opening it)."""
    s = str(spec).strip()
    if s == "push":
        return "push"
    if s.isdigit():
        return "camera"
    if s.lower().startswith(URL_SCHEMES):
        return "url"
    p = Path(s)
    if p.is_dir() or s.endswith(("/", os.sep)):
        return "folder"
    if p.is_file():
        if p.suffix.lower() in IMAGE_SUFFIXES:
            raise SourceError(f"source '{spec}' is a single image; put images in a folder and pass the folder "
                              "(or decide one image with `lineguard predict`)")
        return "video"
    raise SourceError(f"source '{spec}' not found; expected a video file, an image folder, a camera index "
                      "(0, 1, ...), an rtsp:// or http:// stream URL, or 'push'")


def open_source(spec: str, **options: Any) -> FrameSource:
    """The source a ``--source`` string names: ``video.avi``, ``folder/``, ``0``, ``rtsp://…``, ``http://…``, ``push``.

    ``options`` are the kind's own (see each class); an option the kind does not take is
    an error naming the ones it does. ``None`` values are ignored (use the default).
    """
    kind = source_kind(spec)
    opts = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(opts) - set(_OPTIONS[kind]))
    if unknown:
        allowed = ", ".join(o for o in _OPTIONS[kind] if o not in ("opener", "clock", "monotonic"))
        raise SourceError(f"source option(s) {', '.join(unknown)} do not apply to a {kind} source; "
                          f"a {kind} source takes: {allowed or 'no options'}")
    s = str(spec).strip()
    if kind == "push":
        return PushSource(**opts)
    if kind == "camera":
        return CameraSource(int(s), **opts)
    if kind == "url":
        return UrlSource(s, **opts)
    if kind == "folder":
        return FolderSource(s, **opts)
    return VideoFileSource(s, **opts)
