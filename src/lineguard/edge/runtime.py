"""The edge loop: frame -> preprocess -> ONNX Runtime -> the bundle's Decision -> record.

:class:`EdgeRuntime` takes frames from a :class:`~lineguard.edge.sources.FrameSource`,
decides them with the bundle's :class:`~lineguard.edge.predictor.Predictor` (the shared
preprocessing, tiles included when the bundle has them, one ONNX Runtime call, the
bundle's :class:`~lineguard.edge.decision.Decision`) and hands each decision to a
:class:`Recorder` as a :class:`~lineguard.edge.store.PredictionRecord` (score,
decision, threshold, latency, the current recipe, the bundle's name and version, cheap
image statistics). A reject goes to the ``signal`` hook first (the PLC's reject coil),
before it is recorded.

Modes: ``free`` decides every frame the source gives; ``triggered`` decides one frame per
:meth:`EdgeRuntime.trigger` (an API call, an MQTT message, a PLC register) -- for a live
source the first frame captured at or after the trigger, for a file the next frame.

Throughput: file sources are decided in small batches of the frames already read
ahead (``batch``, one ONNX call per batch; a frame's ``latency_ms`` is its batch's);
live sources are decided one frame at a time, as soon as each is taken.

Stopping (:meth:`EdgeRuntime.stop`): no new frame is taken, the frames already taken are
decided and recorded, the recorder is flushed, and :meth:`EdgeRuntime.run` returns its
:class:`RunSummary`.

Imports numpy, the standard library and the rest of :mod:`lineguard.edge` only.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from lineguard import LineguardError
from lineguard.edge.bundle import Bundle
from lineguard.edge.predictor import REJECT, Prediction, Predictor
from lineguard.edge.sources import Frame, FrameSource
from lineguard.edge.store import PredictionRecord

if TYPE_CHECKING:
    from lineguard.monitor import Alarm, Monitor

__all__ = ["LATENCY_BUCKETS_MS", "EdgeRuntime", "Recorder", "RunSummary", "RuntimeSettings", "frame_stats"]

log = logging.getLogger("lineguard.edge.runtime")

Mode = Literal["free", "triggered"]
MODES: tuple[str, ...] = ("free", "triggered")
# Upper bounds (ms) of the latency histogram /metrics exposes, Prometheus-style (cumulative, then +Inf).
LATENCY_BUCKETS_MS: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 500.0, 1000.0)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # BT.601, as lineguard.preprocess.image_stats
_STATS_PIXELS = 1024  # cheap statistics look at about this many pixels (a strided subsample)


class Recorder(Protocol):
    """Where each decision goes: the store adapter of :mod:`lineguard.edge.station`, or a test's list.

    ``image`` is the decoded frame (the store keeps it only when its sampling policy
    wants it); ``sent`` names the sinks the ``signal`` hook already delivered the
    decision to (their outbox rows are recorded as sent). ``record`` returns once the
    decision is kept (the store: committed). A recorder may also have
    ``record_batch(items)`` -- a list of ``(rec, image, sent)`` kept in order, in as few
    transactions as it can; when it raises, none of them counts as kept (some may be: the
    idempotency key makes deciding them again safe); the loop then uses it instead of
    ``record`` -- and ``flush()``, called when the loop stops.
    """

    def record(self, rec: PredictionRecord, image: np.ndarray | None, sent: Sequence[str] = ()) -> None: ...


Signal = Callable[[PredictionRecord], Sequence[str] | None]
StatsFn = Callable[[np.ndarray], Mapping[str, float]]


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """What the loop needs from the station: name, starting recipe, mode and the inference settings.

    ``batch`` caps how many read-ahead frames of a file source go into one inference
    call; ``threads`` is ONNX Runtime's intra-op thread count; ``trigger_wait_s`` is how
    long a trigger waits for a live frame captured after it before it counts as missed;
    ``max_frames`` stops the loop after that many frames (None: until the source ends
    or the loop is stopped).
    """

    station: str = "station"
    recipe: str | None = None
    mode: Mode = "free"
    threads: int = 1
    batch: int = 8
    trigger_wait_s: float = 2.0
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LineguardError(f"mode must be free or triggered, got {self.mode!r}")
        if self.batch < 1 or self.threads < 1:
            raise LineguardError(f"batch and threads must be >= 1, got batch {self.batch}, threads {self.threads}")
        if not (self.trigger_wait_s > 0):
            raise LineguardError(f"trigger_wait_s must be > 0, got {self.trigger_wait_s}")
        if self.max_frames is not None and self.max_frames < 1:
            raise LineguardError(f"max_frames must be >= 1, got {self.max_frames}")


class _HasSettings(Protocol):
    def runtime_settings(self) -> RuntimeSettings: ...


@dataclass(frozen=True)
class RunSummary:
    """What a run did: frames taken and decided, records written, drops, and why it ended.

    ``ended`` is ``end_of_source`` (a file ran out), ``stopped`` (:meth:`EdgeRuntime.stop`,
    SIGTERM), ``max_frames`` or ``error`` (then ``error`` says what).
    """

    station: str
    frames: int
    decided: int
    recorded: int
    rejects: int
    failed: int
    record_errors: int
    dropped: int
    triggers_missed: int
    duration_s: float
    frames_per_s: float
    ended: str
    error: str | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def frame_stats(image: np.ndarray) -> dict[str, float]:
    """Cheap statistics of a frame: luma ``brightness`` (mean) and ``contrast`` (standard deviation).

    BT.601 luma, as :func:`lineguard.preprocess.image_stats` computes for a bundle's
    reference statistics, on a strided subsample of about 1,024 pixels, so the cost is
    the same (tens of microseconds) whatever the camera's resolution; on camera images the
    estimate is within a grey level or two of the full image's (the mean error is smaller).
    """
    h, w = image.shape[:2]
    step = max(1, int(math.sqrt(h * w / _STATS_PIXELS)))
    luma = np.ascontiguousarray(image[::step, ::step]).reshape(-1, 3) @ _LUMA
    mean = float(luma.mean())
    return {"brightness": mean, "contrast": math.sqrt(max(0.0, float(np.dot(luma, luma)) / luma.size - mean * mean))}


class EdgeRuntime:
    """One station's loop: a source, a bundle, a recorder. ``run()`` blocks until the source ends or ``stop()``.

    ``bundle`` is a :class:`~lineguard.edge.bundle.Bundle`, a bundle path or a ready
    :class:`~lineguard.edge.predictor.Predictor`; ``station`` is a
    :class:`RuntimeSettings` or anything with ``runtime_settings()`` (the
    :class:`~lineguard.edge.station.StationConfig`). ``signal(rec)`` is called at once for
    every reject, before it is recorded, and returns the names of the sinks it delivered
    to (or None). ``stats_fn(image)`` adds statistics to each record's ``stats`` (the
    monitoring hook). ``monitor`` (a :class:`lineguard.monitor.Monitor`) watches every decided
    frame: its image signals go into the record's ``stats``, the model's embedding comes from
    the same ONNX call as the decision, and each alarm goes to ``on_alarm``. ``clock`` gives
    unix seconds (tests pass their own).
    """

    def __init__(
        self,
        bundle: Bundle | Predictor | str | Path,
        source: FrameSource,
        *,
        station: RuntimeSettings | _HasSettings,
        recorder: Recorder,
        signal: Signal | None = None,
        stats_fn: StatsFn | None = None,
        monitor: Monitor | None = None,
        on_alarm: Callable[[Alarm], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = station if isinstance(station, RuntimeSettings) else station.runtime_settings()
        self._predictor = bundle if isinstance(bundle, Predictor) else Predictor(bundle, threads=self.settings.threads)
        self.source = source
        self.recorder = recorder
        self.signal = signal
        self.stats_fn = stats_fn
        self._monitor = monitor
        self._mon_lock = threading.Lock()
        self._input_matches: tuple[Any, ...] = (None, None, False)  # (monitor, predictor, same preprocessing)
        self.on_alarm = on_alarm
        self.alarms_fired = 0
        self._clock = clock
        self._recipe: str | None = None
        self.set_recipe(self.settings.recipe)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._trig = threading.Condition()
        self._triggers: list[float] = []
        self._start_ms = int(clock() * 1000)
        self._submit_seq = 0
        self._started_mono: float | None = None
        # counters (updated under self._lock; read without it for /metrics)
        self.frames = 0
        self.decided = 0
        self.recorded = 0
        self.rejects = 0
        self.failed = 0
        self.record_errors = 0
        self.signal_errors = 0
        self.triggers_received = 0
        self.triggers_missed = 0
        self.frames_skipped_untriggered = 0
        self.last_error: str | None = None
        self._decisions: dict[str, dict[str, int]] = {}
        self._lat_counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self._lat_sum = 0.0

    # --- control (any thread) -------------------------------------------------------------------

    @property
    def recipe(self) -> str | None:
        """The recipe recorded with, and deciding the threshold of, the next decision."""
        return self._recipe

    def set_recipe(self, name: str | None) -> None:
        """Switch the current recipe (config, API, MQTT, PLC); one the bundle does not know is refused."""
        if name is not None:
            name = str(name).strip() or None
        known = self._predictor.bundle.recipes
        if name is not None and known and name not in known:
            raise LineguardError(f"recipe '{name}' is not one of the bundle's recipes: {', '.join(known)}")
        if name != self._recipe:
            log.info("recipe: %s -> %s", self._recipe, name)
        self._recipe = name

    def trigger(self) -> None:
        """Decide the next frame (triggered mode); in free mode every frame is decided anyway."""
        t = self._clock()
        with self._trig:
            self.triggers_received += 1
            if self.settings.mode == "triggered":
                self._triggers.append(t)
                self._trig.notify_all()

    def set_predictor(self, predictor: Predictor) -> None:
        """Decide with another bundle from the next frame on (hot swap: the caller verified it)."""
        if self._monitor is not None:
            from lineguard.monitor import Monitor

            # the new model's reference, thresholds and version
            fresh = Monitor.from_bundle(predictor.bundle, batch=self._monitor.batch)
            with self._mon_lock:
                self._monitor = fresh
        self._predictor = predictor
        self.set_recipe(self._recipe if not predictor.bundle.recipes or self._recipe in predictor.bundle.recipes
                        else None)

    @property
    def monitor(self) -> MonitorView | None:
        """Thread-safe access to the station's Monitor (for the API and the dashboard), or None."""
        return MonitorView(self) if self._monitor is not None else None

    @property
    def predictor(self) -> Predictor:
        return self._predictor

    def request_stop(self) -> None:
        """Stop taking frames; returns at once (safe in a signal handler). The loop drains and returns."""
        self._stop.set()
        with self._trig:
            self._trig.notify_all()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop taking frames, wait for the frames in flight to be recorded and the recorder flushed.

        Returns True when the loop has finished within ``timeout_s`` (at once when called
        from the loop's own thread, or when it never ran).
        """
        self.request_stop()
        if self._loop_thread is None or self._loop_thread is threading.current_thread():
            return True
        return self._done.wait(timeout_s)

    @property
    def running(self) -> bool:
        return self._loop_thread is not None and not self._done.is_set()

    # --- the loop ----------------------------------------------------------------------------------

    def run(self) -> RunSummary:
        """Take, decide and record frames until the source ends, ``max_frames`` or :meth:`stop`."""
        if self._loop_thread is not None:
            raise LineguardError("this runtime has already run; make a new one")
        self._loop_thread = threading.current_thread()
        self._started_mono = time.monotonic()
        ended, error = "end_of_source", None
        try:
            ended = self._run_triggered() if self.settings.mode == "triggered" else self._run_free()
            if self._stop.is_set() and ended == "end_of_source":
                ended = "stopped"
        except Exception as exc:
            ended, error = "error", str(exc)
            raise
        finally:
            if self._monitor is not None:  # the frames a batching monitor still holds
                with self._mon_lock:
                    alarms = self._monitor.flush()
                self._deliver(alarms, "the end of the stream")
            self._flush()
            self._done.set()
            self.summary = self._summary(ended, error)
        return self.summary

    def _run_free(self) -> str:
        limit = self.settings.max_frames
        batch = self.settings.batch if not self.source.drops_frames else 1
        batches = self.source.batches(self._stop, batch)
        try:
            for frames in batches:
                if not frames:
                    continue
                if limit is not None:
                    frames = frames[: limit - self.frames]
                self._process(frames)
                if limit is not None and self.frames >= limit:
                    return "max_frames"
        finally:
            _close(batches)
        return "end_of_source"

    def _wait_trigger(self) -> float | None:
        """The time of the oldest pending trigger (consumed), or None when stopping."""
        with self._trig:
            while not self._triggers and not self._stop.is_set():
                self._trig.wait(0.1)
            if self._stop.is_set():
                return None
            return self._triggers.pop(0)

    def _run_triggered(self) -> str:
        limit = self.settings.max_frames
        live = self.source.drops_frames
        batches = self.source.batches(self._stop, 1)
        try:
            while True:
                t_trigger = self._wait_trigger()
                if t_trigger is None:
                    return "stopped"
                frame = self._frame_after(batches, t_trigger) if live else _first(batches)
                if frame is _MISSED:
                    continue
                if frame is None:
                    return "stopped" if self._stop.is_set() else "end_of_source"
                assert isinstance(frame, Frame)
                self._process([frame])
                if limit is not None and self.frames >= limit:
                    return "max_frames"
        finally:
            _close(batches)

    def _frame_after(self, batches: Iterator[list[Frame]], t_trigger: float) -> Frame | object | None:
        """The first live frame captured at or after the trigger, within ``trigger_wait_s``."""
        deadline = time.monotonic() + self.settings.trigger_wait_s
        while time.monotonic() < deadline:
            frames = next(batches, None)
            if frames is None:
                return None
            for f in frames:
                if f.time >= t_trigger:
                    return f
                self.frames_skipped_untriggered += 1
        self.triggers_missed += 1
        log.warning("trigger at %.3f: no frame within %.1f s; not decided (source %s)", t_trigger,
                    self.settings.trigger_wait_s, self.source.stats.get("state"))
        return _MISSED

    def _process(self, frames: Sequence[Frame]) -> None:
        """Decide a batch of taken frames, signal its rejects, record it; acknowledge what was recorded.

        Monitored, after the batch's inference its image signals are computed in one call
        (:meth:`~lineguard.monitor.ImageSignals.of_inputs`: one frame costs about what the batch does) and
        its decided frames go to the monitor in one call (:meth:`~lineguard.monitor.Monitor.update_many`);
        then, frame by frame in order, each record gets its frame's signals in ``stats`` and a reject is
        signalled; the batch's records are written together, as unmonitored.
        """
        recipe = self._recipe
        predictor, monitor = self._predictor, self._monitor
        with self._lock:
            self.frames += len(frames)
        outputs: dict[str, np.ndarray] = {}
        if monitor is not None:
            preds, outputs = self._decide_with_outputs(predictor, frames, recipe)
        else:
            preds = self._decide(predictor, frames, recipe)
        watched = None if monitor is None else self._watch(monitor, predictor, frames, preds, outputs, recipe)
        if watched is not None:
            from lineguard.monitor import as_stats
        station, stats_fn = self.settings.station, self.stats_fn
        done: list[Frame] = []
        items: list[tuple[Frame, PredictionRecord, Sequence[str]]] = []
        for i, (frame, pred) in enumerate(zip(frames, preds, strict=True)):
            if pred is None:
                done.append(frame)  # undecidable (counted, logged): not retried
                continue
            # Monitored, the record's brightness and contrast are the monitor's (on the model input).
            stats = frame_stats(frame.image) if watched is None else as_stats(watched[i])
            if stats_fn is not None:
                stats.update(stats_fn(frame.image))
            rec = PredictionRecord(frame.frame_id, frame.time, station, frame.source, recipe, pred.label,
                                   pred.score, pred.decision, pred.threshold, pred.bundle_name,
                                   pred.bundle_version, pred.latency_ms, stats)
            items.append((frame, rec, self._signal_reject(rec)))
        if items:
            recorded = self._record(items)
            done.extend(frame for (frame, _, _), ok in zip(items, recorded, strict=True) if ok)
        self.source.ack(done)

    def _decide_with_outputs(self, predictor: Predictor, frames: Sequence[Frame], recipe: str | None
                             ) -> tuple[list[Prediction | None], dict[str, np.ndarray]]:
        """Decisions, the model's embeddings and its input batch from one ONNX call; a failing batch is
        decided frame by frame (no outputs then)."""
        try:
            preds, out = predictor.predict_outputs([f.image for f in frames], recipe)
        except LineguardError:
            return self._decide(predictor, frames, recipe), {}
        return list(preds), out

    def _watch(self, monitor: Monitor, predictor: Predictor, frames: Sequence[Frame],
               preds: Sequence[Prediction | None], outputs: Mapping[str, np.ndarray], recipe: str | None
               ) -> np.ndarray:
        """Feed a decided batch to the monitor in one call; returns its image signals, row i frame i's
        (NaN for a frame not decided), for the records' ``stats``.

        The signals come from the input batch the predictor made, in one call, when it is the one the
        monitor's reference was computed on (always, for a bundle's own reference); otherwise (another
        preprocessing, or a failed batch decided frame by frame) from each decided frame's image. A
        monitor replaced since the batch began (a hot swap) is not fed frames the old model decided.
        """
        from lineguard.monitor import IMAGE_SIGNALS

        decided = [i for i, pred in enumerate(preds) if pred is not None]
        inputs, embeddings = outputs.get("input"), outputs.get("embedding")
        if self._input_matches[:2] != (monitor, predictor):  # once per monitor and model, not per batch
            self._input_matches = (monitor, predictor, monitor.signals.params == predictor.params)
        if inputs is not None and self._input_matches[2] and len(decided) == len(frames):
            vectors = monitor.signals.of_inputs(inputs)
        else:
            vectors = np.full((len(frames), len(IMAGE_SIGNALS)), np.nan)
            for i in decided:
                vectors[i] = monitor.signals.of_image(frames[i].image)
        if not decided:
            return vectors
        kept = [p for p in preds if p is not None]
        with self._mon_lock:
            alarms = [] if self._monitor is not monitor else monitor.update_many(
                vectors[decided], None if embeddings is None else embeddings[decided], [p.score for p in kept],
                recipe, times=[frames[i].time for i in decided], rejected=[p.decision == REJECT for p in kept])
        if alarms:
            last = frames[decided[-1]]
            self._deliver(alarms, f"the batch up to frame {last.frame_id} ({last.source})")
        return vectors

    def _deliver(self, alarms: Sequence[Alarm], where: str) -> None:
        """Log and hand on drift alarms (a batching monitor returns them up to a batch of frames late)."""
        for alarm in alarms:
            self.alarms_fired += 1
            log.warning("drift alarm at %s: %s", where, alarm.message())
            if self.on_alarm is not None:
                try:
                    self.on_alarm(alarm)
                except Exception as exc:  # an alert that cannot be sent must not stop the line
                    log.error("alarm hook failed: %s", exc)

    def _decide(self, predictor: Predictor, frames: Sequence[Frame], recipe: str | None) -> list[Prediction | None]:
        try:
            if len(frames) == 1:
                one = predictor.predict(frames[0].image, recipe)
                assert isinstance(one, Prediction)
                return [one]
            return list(predictor.predict([f.image for f in frames], recipe))
        except LineguardError as exc:
            if len(frames) == 1:
                self._failed(frames[0], exc)
                return [None]
        # One bad item fails its batch: decide each frame alone so the others still get their decision.
        out: list[Prediction | None] = []
        for f in frames:
            try:
                one = predictor.predict(f.image, recipe)
                assert isinstance(one, Prediction)
                out.append(one)
            except LineguardError as exc:
                self._failed(f, exc)
                out.append(None)
        return out

    def _failed(self, frame: Frame, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
            self.last_error = f"{frame.source}: {exc}"
        log.error("frame %s (%s) not decided: %s", frame.frame_id, frame.source, exc)

    def _signal_reject(self, rec: PredictionRecord) -> Sequence[str]:
        """Send a reject to the line at once (the ``signal`` hook); the sinks it reached, () otherwise."""
        if rec.decision != REJECT or self.signal is None:
            return ()
        try:
            return tuple(self.signal(rec) or ())
        except Exception as exc:  # the line signal failing must not stop the loop; the outbox retries it
            with self._lock:
                self.signal_errors += 1
                self.last_error = f"reject signal: {exc}"
            log.error("reject signal for %s failed: %s", rec.key, exc)
            return ()

    def _record(self, items: Sequence[tuple[Frame, PredictionRecord, Sequence[str]]]) -> list[bool]:
        """Hand decisions to the recorder (a batch in one call when it has ``record_batch``); count them.

        Returns, per decision, whether it was recorded.
        """
        recorder = self.recorder
        batch = getattr(recorder, "record_batch", None)
        ok: list[bool]
        if callable(batch):
            try:
                batch([(rec, frame.image, sent) for frame, rec, sent in items])
                ok = [True] * len(items)
            except Exception as exc:
                ok = [False] * len(items)
                self._record_failed(f"record {len(items)} decisions from {items[0][1].key}", exc, len(items))
        else:
            ok = []
            for frame, rec, sent in items:
                try:
                    recorder.record(rec, frame.image, sent)
                    ok.append(True)
                except Exception as exc:
                    ok.append(False)
                    self._record_failed(f"record {rec.key}", exc, 1)
        with self._lock:
            for (_, rec, _), recorded in zip(items, ok, strict=True):
                latency = rec.latency_ms
                rejected = rec.decision == REJECT
                self.decided += 1
                self.rejects += rejected
                self.recorded += recorded
                per = self._decisions.setdefault(rec.recipe or "", {"accept": 0, "reject": 0})
                per[rec.decision] += 1
                self._lat_counts[bisect.bisect_left(LATENCY_BUCKETS_MS, latency)] += 1
                self._lat_sum += latency
        return ok

    def _record_failed(self, what: str, exc: BaseException, n: int) -> None:
        with self._lock:
            self.record_errors += n
            self.last_error = f"{what}: {exc}"
        log.error("could not %s: %s", what, exc)

    def _flush(self) -> None:
        flush = getattr(self.recorder, "flush", None)
        if callable(flush):
            try:
                flush()
            except Exception as exc:
                self.last_error = f"flush: {exc}"
                log.error("recorder flush failed: %s", exc)

    # --- the API's push path -------------------------------------------------------------------------

    def submit(self, image: np.ndarray, recipe: str | None = None) -> PredictionRecord:
        """Decide one image now, in the caller's thread, record it and return its record (``POST /v1/predict``).

        ``recipe`` overrides the current recipe for this image only (an unknown one is
        refused). An image the model cannot decide raises; nothing is recorded for it.
        """
        if recipe is not None:
            known = self._predictor.bundle.recipes
            if known and recipe not in known:
                raise LineguardError(f"recipe '{recipe}' is not one of the bundle's recipes: {', '.join(known)}")
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise LineguardError(f"an image to decide must be an HxWx3 uint8 RGB array, got "
                                 f"{getattr(image, 'shape', None)} {getattr(image, 'dtype', type(image).__name__)}")
        use = recipe if recipe is not None else self._recipe
        with self._lock:
            self._submit_seq += 1
            frame_id = f"{self._start_ms}-a{self._submit_seq}"
            self.frames += 1
        t = self._clock()
        pred = self._predictor.predict(image, use)
        assert isinstance(pred, Prediction)
        stats = frame_stats(image)
        if self.stats_fn is not None:
            stats.update(self.stats_fn(image))
        rec = PredictionRecord(frame_id, t, self.settings.station, "api", use, pred.label, pred.score,
                               pred.decision, pred.threshold, pred.bundle_name, pred.bundle_version,
                               pred.latency_ms, stats)
        frame = Frame(image, frame_id, t, "api")
        if not self._record([(frame, rec, self._signal_reject(rec))])[0]:
            raise LineguardError(f"decided {rec.key} ({rec.decision}) but could not record it: {self.last_error}")
        return rec

    # --- figures -----------------------------------------------------------------------------------------

    @property
    def metrics(self) -> dict[str, Any]:
        """Counters for ``/metrics``: frames, decisions per recipe and decision, latency histogram, source state."""
        src = self.source.stats
        with self._lock:
            cumulative, total = [], 0
            for le, n in zip((*LATENCY_BUCKETS_MS, math.inf), self._lat_counts, strict=True):
                total += n
                cumulative.append((le, total))
            decisions = {r: dict(d) for r, d in self._decisions.items()}
            return {
                "station": self.settings.station,
                "mode": self.settings.mode,
                "recipe": self._recipe,
                "bundle": {"name": self._predictor.bundle.name, "version": self._predictor.bundle.version},
                "running": self.running,
                "uptime_s": 0.0 if self._started_mono is None else time.monotonic() - self._started_mono,
                "frames": self.frames,
                "decided": self.decided,
                "recorded": self.recorded,
                "rejects": self.rejects,
                "failed": self.failed,
                "record_errors": self.record_errors,
                "signal_errors": self.signal_errors,
                "decisions": decisions,
                "latency_ms": {"buckets": cumulative, "sum": self._lat_sum, "count": total},
                "queue_depth": int(src.get("queue_depth", 0)),
                "dropped": int(src.get("frames_dropped", 0)),
                "triggers": {"received": self.triggers_received, "missed": self.triggers_missed,
                             "pending": len(self._triggers), "skipped_frames": self.frames_skipped_untriggered},
                "source": src,
                "last_error": self.last_error,
                "alarms_fired": self.alarms_fired,
            }

    def _summary(self, ended: str, error: str | None) -> RunSummary:
        duration = 0.0 if self._started_mono is None else time.monotonic() - self._started_mono
        src = self.source.stats
        return RunSummary(
            station=self.settings.station, frames=self.frames, decided=self.decided, recorded=self.recorded,
            rejects=self.rejects, failed=self.failed, record_errors=self.record_errors,
            dropped=int(src.get("frames_dropped", 0)), triggers_missed=self.triggers_missed,
            duration_s=round(duration, 3), frames_per_s=round(self.decided / duration, 1) if duration > 0 else 0.0,
            ended=ended, error=error, source=src,
        )


_MISSED = object()


def _first(batches: Iterator[list[Frame]]) -> Frame | None:
    for frames in batches:
        if frames:
            return frames[0]
    return None


def _close(it: Iterator[Any]) -> None:
    close = getattr(it, "close", None)
    if callable(close):
        close()


class MonitorView:
    """The runtime's :class:`~lineguard.monitor.Monitor` behind its lock: the API reads it while the loop updates it.

    Attribute reads and method calls run under the runtime's monitor lock; containers
    (the alarm deque, the active alarms) come back as copies.
    """

    def __init__(self, runtime: EdgeRuntime) -> None:
        self._runtime = runtime

    def __getattr__(self, name: str) -> Any:
        rt = self._runtime
        with rt._mon_lock:
            value = getattr(rt._monitor, name)
            if isinstance(value, deque | list):
                return list(value)
            if isinstance(value, dict):
                return dict(value)
        if callable(value):
            def locked(*args: Any, **kwargs: Any) -> Any:
                with rt._mon_lock:
                    return value(*args, **kwargs)
            return locked
        return value
