"""A station: its config (``station.yaml``) and :func:`open_station`, which wires source, store, sinks and loop.

One station per process: a station is one camera (or folder, or stream) deciding with
one bundle into one local store; several stations on one computer are several
processes, each with its own ``station.yaml``, store and API port.

:class:`StationConfig` is the whole file, validated with pydantic: an unknown key is
refused with a suggestion, a bad value with one line naming the key and what it
expects. :func:`open_station` composes what the config names -- the frame source, the
local store (every decision is written there first), one outbox worker per sink, the
reject signal to the line, the line inputs (recipe and trigger over MQTT or Modbus),
sync to blob storage, a challenger model in shadow (:mod:`lineguard.edge.shadow`) -- around an :class:`~lineguard.edge.runtime.EdgeRuntime`, so
``lineguard edge run`` and ``lineguard serve`` build the same station.

Imports pydantic and PyYAML besides the edge; never the training side.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lineguard import LineguardError
from lineguard.edge.runtime import EdgeRuntime, RunSummary, RuntimeSettings

if TYPE_CHECKING:
    from lineguard.edge.bundle import Bundle, BundleLimits
    from lineguard.edge.predictor import Predictor
    from lineguard.edge.shadow import ShadowRunner, ShadowSlot
    from lineguard.edge.signing import Trust
    from lineguard.edge.sources import FrameSource
    from lineguard.edge.store import PredictionRecord

__all__ = [
    "ApiConfig",
    "ControlConfig",
    "ShadowConfig",
    "SinkConfig",
    "SourceConfig",
    "Station",
    "StationConfig",
    "StationConfigError",
    "StoreConfig",
    "StoreRecorder",
    "SyncConfig",
    "load_station_config",
    "open_station",
]

log = logging.getLogger("lineguard.edge.station")

MAX_YAML_BYTES = 1_000_000
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class StationConfigError(LineguardError):
    """``station.yaml`` (or a CLI option over it) is not a valid station config; one line says why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Section):
    """``source:`` -- where frames come from, and the options of that kind of source.

    ``input`` is what ``--source`` takes: a video file, an image folder, a camera index,
    an ``rtsp://`` / ``http://`` stream URL, or ``push`` (frames posted to the API). An
    option that does not apply to the input's kind is refused when the station opens.
    """

    input: str | None = Field(None, description="video file, image folder, camera index, rtsp:// or http:// URL, or push")
    # video
    loop: bool | None = Field(None, description="video: start again at the end")
    realtime: bool | None = Field(None, description="video: read at the file's frame rate, not as fast as possible")
    prefetch: int | None = Field(None, ge=1, le=1024, description="video/folder: frames decoded ahead (back-pressure)")
    # folder
    watch: bool | None = Field(None, description="folder: keep looking for new files until stopped")
    settle_s: float | None = Field(None, ge=0, description="folder: a file is read once unchanged this long")
    poll_s: float | None = Field(None, gt=0, description="folder: how often to look for new files")
    recursive: bool | None = Field(None, description="folder: include sub-folders")
    # camera / url
    width: int | None = Field(None, ge=1, description="camera: frame width to ask for")
    height: int | None = Field(None, ge=1, description="camera: frame height to ask for")
    fps: float | None = Field(None, gt=0, description="camera: frame rate to ask for")
    frame_timeout_s: float | None = Field(None, gt=0, description="camera/url: no frame this long = disconnected")
    reconnect_min_s: float | None = Field(None, gt=0, description="camera/url: first reconnect wait")
    reconnect_max_s: float | None = Field(None, gt=0, description="camera/url: longest reconnect wait (backoff cap)")
    open_timeout_s: float | None = Field(None, gt=0, description="url: how long opening the stream may take")
    read_timeout_s: float | None = Field(None, gt=0, description="url: how long one read may block")
    # push
    capacity: int | None = Field(None, ge=1, le=10_000, description="push: frames queued before the oldest is dropped")

    @field_validator("input", mode="before")
    @classmethod
    def _input_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    def options(self) -> dict[str, Any]:
        """The source options that are set (for :func:`~lineguard.edge.sources.open_source`)."""
        return {k: v for k, v in self.model_dump(exclude={"input"}).items() if v is not None}


class _Open(BaseModel):
    """An entry whose other keys are the options of the thing it names (checked when it is built)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SinkConfig(_Open):
    """One ``sinks:`` entry: ``kind`` (jsonl, webhook, mqtt, modbus), an optional ``name``, the sink's options."""

    kind: str
    name: str | None = None

    def spec_options(self) -> dict[str, Any]:
        opts = self.options()
        if self.name is not None:
            opts["name"] = self.name
        return opts

    @property
    def sink_name(self) -> str:
        return self.name or self.kind


class ControlConfig(_Open):
    """One ``controls:`` entry: a line input that sets the recipe and triggers frames -- ``kind`` mqtt or modbus."""

    kind: Literal["mqtt", "modbus"]


class SamplingConfig(_Section):
    """``store.sampling:`` -- which images the store keeps (every reject, near-threshold frames, a share of passes)."""

    rejects: bool = True
    low_confidence_band: float = Field(0.15, ge=0, le=1)
    pass_share: float = Field(0.02, ge=0, le=1)
    seed: int = 0


class StoreConfig(_Section):
    """``store:`` -- the local SQLite store every decision is written to first."""

    path: str = "lineguard-store.db"
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    retention_days: float = Field(30.0, gt=0)
    max_bytes: int = Field(2_000_000_000, ge=10_000_000)
    min_free_bytes: int | None = Field(None, ge=0)
    sampling: SamplingConfig = SamplingConfig()


class SyncConfig(_Section):
    """``sync:`` -- store-and-forward of records and sampled images to blob storage (off without ``url``)."""

    url: str | None = None
    interval_s: float = Field(10.0, gt=0)
    batch: int = Field(500, ge=1, le=100_000)


class ShadowConfig(_Section):
    """``shadow:`` -- a challenger bundle that decides every frame beside the champion, never acting on the line.

    ``bundle`` starts one with the station (else one can be installed over the API);
    ``digest`` pins it; ``queue_size`` bounds the frames waiting for it (more are skipped and
    counted, never waited for); ``threads`` is its ONNX Runtime thread count and ``nice`` how
    much lower its worker's CPU priority is than the champion's. ``enabled: false`` turns
    shadow mode off (the API then refuses to install one).
    """

    enabled: bool = True
    bundle: str | None = None
    digest: str | None = Field(None, pattern=r"^sha256:[0-9a-f]{64}$")
    queue_size: int = Field(32, ge=1, le=4096)
    threads: int = Field(1, ge=1, le=16)
    nice: int = Field(10, ge=0, le=19)


class ApiConfig(_Section):
    """``api:`` -- the station's HTTP API (``lineguard serve``)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    token: str | None = None
    token_file: str | None = None
    hot_swap: bool = False


class StationConfig(_Section):
    """``station.yaml``: one station -- name, bundle, recipe, mode, source, store, sinks, line inputs, sync, shadow, API."""

    station: str = "station"
    bundle: str | None = None
    recipe: str | None = None
    mode: Literal["free", "triggered"] = "free"
    threads: int = Field(1, ge=1, le=64)
    batch: int = Field(8, ge=1, le=256)
    trigger_wait_s: float = Field(2.0, gt=0)
    max_frames: int | None = Field(None, ge=1)
    drain_s: float = Field(2.0, ge=0, le=30)
    state_dir: str | None = None
    monitor: bool = True
    source: SourceConfig = SourceConfig()
    sinks: list[SinkConfig] = []
    controls: list[ControlConfig] = []
    store: StoreConfig = StoreConfig()
    sync: SyncConfig = SyncConfig()
    shadow: ShadowConfig = ShadowConfig()
    api: ApiConfig = ApiConfig()

    @field_validator("station")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("must be a plain name: letters, digits, '.', '_' or '-', at most 64, no ':' or '/'")
        return v

    @field_validator("source", mode="before")
    @classmethod
    def _source_shorthand(cls, v: Any) -> Any:
        return {"input": v} if isinstance(v, str | int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _unique_sinks(self) -> StationConfig:
        names = [s.sink_name for s in self.sinks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"sink name '{dup[0]}' appears twice; give each sink of a kind its own 'name'")
        return self

    def runtime_settings(self) -> RuntimeSettings:
        return RuntimeSettings(station=self.station, recipe=self.recipe, mode=self.mode, threads=self.threads,
                               batch=self.batch, trigger_wait_s=self.trigger_wait_s, max_frames=self.max_frames)

    @property
    def state_path(self) -> Path:
        """Where the station keeps its small state files (the folder ledger): ``state_dir`` or the store's folder."""
        return Path(self.state_dir) if self.state_dir else Path(self.store.path).expanduser().resolve().parent


# --- loading ----------------------------------------------------------------------------------------


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The config section class a validation error's location points into."""
    model: type[BaseModel] = StationConfig
    for part in loc:
        if isinstance(part, int):
            continue
        f = model.model_fields.get(str(part))
        if f is None:
            return model
        ann = f.annotation
        args = getattr(ann, "__args__", ())
        nxt = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nxt is None:
            return model
        model = nxt
    return model


def _one_line(exc: ValidationError, where: str) -> str:
    err = exc.errors()[0]
    loc = [p for p in err["loc"]]
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        model = _model_at(loc[:-1])
        valid = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{where}: unknown key '{dotted}'{hint} Valid keys here: {', '.join(valid)}"
    got = repr(err.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: '{dotted}' {msg[:1].lower() + msg[1:]} (got {got})"


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise StationConfigError(f"station config '{path}' not found")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise StationConfigError(f"station config '{path}' is {size:,} bytes; at most {MAX_YAML_BYTES:,}")
    text = path.read_bytes()[: MAX_YAML_BYTES + 1]
    try:
        loader = yaml.SafeLoader(text.decode("utf-8"))
        try:
            node = loader.get_single_node()
            if node is not None and _nodes(node) > 10_000:
                raise StationConfigError(f"station config '{path}' expands to more than 10,000 values (aliases?)")
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise StationConfigError(f"station config '{path}' is not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise StationConfigError(f"station config '{path}' must be a mapping of keys (station:, source:, ...)")
    return data


def _nodes(root: yaml.Node) -> int:
    """Values a YAML document expands to, aliases counted each time (a billion laughs is refused unexpanded)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        kids: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        if done or not kids:
            sizes[id(node)] = min(1 + sum(sizes.get(id(k), 0) for k in kids), 10**9)
            continue
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in sizes)
    return sizes[id(root)]


def load_station_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                        extra_sinks: Sequence[Mapping[str, Any]] = ()) -> StationConfig:
    """``station.yaml`` (or the defaults), with ``overrides`` (dotted keys, e.g. ``{"store.path": "x.db"}``) on top.

    ``extra_sinks`` are appended to the file's ``sinks`` (the CLI's ``--sink``). A value of
    None in ``overrides`` leaves the file's value. Raises :class:`StationConfigError`.
    """
    where = str(path) if path is not None else "station config"
    data: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if isinstance(child, str | int) and part == "source":
                child = {"input": child}
            if not isinstance(child, dict):
                child = {}
            node[part] = child
            node = child
        node[parts[-1]] = value
    if extra_sinks:
        sinks = data.get("sinks") or []
        if not isinstance(sinks, list):
            raise StationConfigError(f"{where}: 'sinks' must be a list of entries (kind: ..., options)")
        data["sinks"] = [*sinks, *(dict(s) for s in extra_sinks)]
    try:
        return StationConfig.model_validate(data)
    except ValidationError as exc:
        raise StationConfigError(_one_line(exc, where)) from None


# --- composition -------------------------------------------------------------------------------------


class StoreRecorder:
    """The loop's :class:`~lineguard.edge.runtime.Recorder` over the local store.

    Each decision is one store transaction with an outbox row per sink (``sinks``); a
    sink the reject signal already reached is recorded as sent. The frame is encoded to
    PNG only when the store's sampling (and disk) policy wants its image. The outbox
    workers are woken after each record so deliveries leave at once. Once committed, each
    decision is offered to the challenger in ``shadow`` (a :class:`~lineguard.edge.shadow.ShadowSlot`),
    which only queues it: the champion's path never waits for the challenger.
    """

    def __init__(self, store: Any, sinks: Sequence[str] = (), workers: Sequence[Any] = (),
                 shadow: ShadowSlot | None = None) -> None:
        self.store = store
        self.sinks = tuple(sinks)
        self.workers = tuple(workers)
        self.shadow = shadow

    def _png(self, rec: PredictionRecord, image: np.ndarray | None) -> bytes | None:
        return encode_png(image) if image is not None and self.store.wants_image(rec) else None

    def record(self, rec: PredictionRecord, image: np.ndarray | None, sent: Sequence[str] = ()) -> None:
        pending = [s for s in self.sinks if s not in sent] if sent else self.sinks
        rid = self.store.record(rec, self._png(rec, image), sinks=pending, sent=tuple(sent))
        self._wake()
        if self.shadow is not None:
            self.shadow.offer(rid, rec, image)

    def record_batch(self, items: Sequence[tuple[PredictionRecord, np.ndarray | None, Sequence[str]]]) -> None:
        """Several decisions, in order: one transaction per run of decisions with the same ``sent``."""
        run: list[tuple[PredictionRecord, bytes | None]] = []
        run_sent: tuple[str, ...] = ()
        ids: list[int] = []
        for rec, image, sent in items:
            sent = tuple(sent)
            if run and sent != run_sent:
                ids += self._commit(run, run_sent)
                run = []
            run_sent = sent
            run.append((rec, self._png(rec, image)))
        if run:
            ids += self._commit(run, run_sent)
        self._wake()
        if self.shadow is not None:
            for rid, (rec, image, _) in zip(ids, items, strict=True):
                self.shadow.offer(rid, rec, image)

    def _commit(self, run: Sequence[tuple[PredictionRecord, bytes | None]], sent: tuple[str, ...]) -> list[int]:
        pending = [s for s in self.sinks if s not in sent] if sent else self.sinks
        return list(self.store.record_many(run, sinks=pending, sent=sent))

    def _wake(self) -> None:
        for w in self.workers:
            w.wake()


def encode_png(image: np.ndarray) -> bytes:
    """An HxWx3 uint8 RGB frame as PNG bytes (lossless; fast compression: sampled frames, not archives).

    OpenCV's encoder when it is installed (faster, and it releases the GIL), else Pillow's.
    """
    try:
        import cv2
    except ImportError:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise LineguardError("OpenCV could not encode the frame as PNG")
    return bytes(data)


@dataclass
class Station:
    """An opened station: call :meth:`run` (blocks until the source ends or :meth:`stop`), then it closes itself.

    ``close`` stops the line inputs, lets the outbox deliver for up to ``drain_s`` (what
    is not delivered stays in the store's outbox for the next start), stops the challenger
    in shadow, stops sync and closes sinks, store and source -- in that order.
    """

    config: StationConfig
    runtime: EdgeRuntime
    source: FrameSource
    store: Any
    sinks: list[Any] = field(default_factory=list)
    workers: list[Any] = field(default_factory=list)
    sync: Any = None
    controls: list[Any] = field(default_factory=list)
    shadow_slot: ShadowSlot | None = None
    _started: bool = False
    _closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start_background(self) -> None:
        """Start the outbox workers, sync and line inputs (run() does this; the API may call it alone)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        for w in self.workers:
            w.start()
        if self.sync is not None:
            self.sync.start()
        for c in self.controls:
            start = getattr(c, "start", None)
            if callable(start):
                start()

    def run(self) -> RunSummary:
        self.start_background()
        try:
            return self.runtime.run()
        finally:
            self.close()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop taking frames and wait for the frames in flight to be recorded (then run() closes the station)."""
        return self.runtime.stop(timeout_s)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.runtime.stop(timeout_s=5.0)
        for c in self.controls:
            _quietly(getattr(c, "stop", None) or getattr(c, "close", None))
        drain_s = self.config.drain_s
        for w in self.workers:
            try:
                if drain_s > 0:
                    w.drain(drain_s / max(1, len(self.workers)))
            except Exception as exc:
                log.warning("outbox drain for %s: %s", getattr(w, "sink", w), exc)
            _quietly(w.stop)
        if self.shadow_slot is not None:
            _quietly(self.shadow_slot.close)
        if self.sync is not None:
            _quietly(self.sync.stop)
        for s in self.sinks:
            _quietly(s.close)
        if self.store is not None:
            _quietly(self.store.close)
        _quietly(self.source.close)

    @property
    def monitor(self) -> Any:
        """The runtime's drift monitor (a thread-safe view), or None."""
        return self.runtime.monitor

    @property
    def shadow(self) -> ShadowRunner | None:
        """The challenger running in shadow, or None."""
        return self.shadow_slot.runner if self.shadow_slot is not None else None

    @property
    def metrics(self) -> dict[str, Any]:
        """The runtime's figures plus each outbox's backlog and the sync backlog."""
        m = self.runtime.metrics
        m["outbox"] = {w.sink.name: {"backlog": w.backlog, "delivered": w.delivered,
                                                    "failures": w.failures, "last_error": w.last_error}
                       for w in self.workers}
        if self.sync is not None:
            m["sync_backlog"] = self.sync.backlog
        return m


def _quietly(fn: Any) -> None:
    if not callable(fn):
        return
    try:
        fn()
    except Exception as exc:  # closing one part must not stop the others from closing
        log.warning("while closing: %s", exc)


def _ledger_path(config: StationConfig, folder: str) -> Path:
    digest = hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:10]
    return config.state_path / f"{config.station}.seen-{digest}.jsonl"


def _open_monitor(config: StationConfig, predictor: Predictor) -> Any:
    """The station's drift monitor from the bundle's reference; None when turned off or the bundle has none."""
    if not config.monitor:
        return None
    from lineguard.monitor import EDGE_BATCH, Monitor, MonitorError

    try:
        return Monitor.from_bundle(predictor.bundle, batch=EDGE_BATCH)
    except MonitorError as exc:  # an older bundle: the line runs, health and the log say monitoring is off
        log.warning("drift monitoring is off for this bundle: %s", exc)
        return None


def open_station(config: StationConfig, bundle: Bundle | Predictor | str | Path | None = None, *,
                 source: FrameSource | None = None, trust: Trust | None = None,
                 bundle_limits: BundleLimits | None = None) -> Station:
    """Open everything ``config`` names around one :class:`EdgeRuntime`; nothing runs until ``Station.run()``.

    ``bundle`` defaults to ``config.bundle``; ``source`` (a ready source, e.g. the API's
    :class:`~lineguard.edge.sources.PushSource`) replaces ``config.source.input``; ``trust``
    and ``bundle_limits`` apply to the challenger in shadow (as the champion's slot applies
    them). A challenger that cannot be loaded does not stop the station: it runs without
    one, and the log and ``GET /v1/shadow`` say why. On any other error, what was already
    opened is closed again.
    """
    from lineguard.edge.outbox import OutboxWorker
    from lineguard.edge.sinks import SinkSpec, open_sink
    from lineguard.edge.sources import FolderSource, open_source
    from lineguard.edge.store import SamplePolicy, Store
    from lineguard.edge.sync import Sync

    bundle = bundle if bundle is not None else config.bundle
    if bundle is None:
        raise StationConfigError("no bundle: pass --bundle or set 'bundle:' in station.yaml")
    opened: list[Any] = []
    try:
        if source is None:
            if not config.source.input:
                raise StationConfigError("no source: pass --source or set 'source: input:' in station.yaml")
            options = config.source.options()
            from lineguard.edge.sources import source_kind

            if source_kind(config.source.input) == "folder":
                config.state_path.mkdir(parents=True, exist_ok=True)
                options["ledger"] = _ledger_path(config, config.source.input)
            source = open_source(config.source.input, **options)
        opened.append(source)
        sc = config.store
        sampling = SamplePolicy(rejects=sc.sampling.rejects, low_confidence_band=sc.sampling.low_confidence_band,
                                pass_share=sc.sampling.pass_share, seed=sc.sampling.seed)
        store_kwargs: dict[str, Any] = {"synchronous": sc.synchronous, "retention_days": sc.retention_days,
                                        "max_bytes": sc.max_bytes, "sample": sampling}
        if sc.min_free_bytes is not None:
            store_kwargs["min_free_bytes"] = sc.min_free_bytes
        Path(sc.path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        store = Store(sc.path, **store_kwargs)
        opened.append(store)
        sinks = []
        for entry in config.sinks:
            sink = open_sink(SinkSpec(entry.kind, entry.spec_options()))
            opened.append(sink)
            sinks.append(sink)
        workers = [OutboxWorker(store, s) for s in sinks]
        signal = _reject_signal(sinks)
        shadow = _open_shadow(config, store, trust, bundle_limits)
        if shadow is not None:
            opened.append(shadow)
        recorder = StoreRecorder(store, [s.name for s in sinks], workers, shadow)
        from lineguard.edge.predictor import Predictor

        predictor = bundle if isinstance(bundle, Predictor) else Predictor(bundle, threads=config.threads)
        monitor = _open_monitor(config, predictor)
        names = [s.name for s in sinks]

        def alert(alarm: Any) -> None:  # a drift alarm leaves through each sink's outbox, like a decision
            key = f"{config.station}:alarm:{alarm.signal}:{alarm.direction}:{alarm.frame}"
            store.add_alert(key, {"station": config.station, "alarm": alarm.to_dict()}, names)
            for w in workers:
                w.wake()

        runtime = EdgeRuntime(predictor, source, station=config, recorder=recorder, signal=signal,
                              monitor=monitor, on_alarm=alert if names else None)
        controls = [_open_control(c, config, runtime) for c in config.controls]
        sync = Sync(store, config.sync.url, batch=config.sync.batch, interval_s=config.sync.interval_s) \
            if config.sync.url else None
        if isinstance(source, FolderSource):
            log.info("folder ledger: %s", source.ledger_path)
        return Station(config=config, runtime=runtime, source=source, store=store, sinks=sinks, workers=workers,
                       sync=sync, controls=controls, shadow_slot=shadow)
    except BaseException:
        for thing in reversed(opened):
            _quietly(getattr(thing, "close", None))
        raise


def _open_shadow(config: StationConfig, store: Any, trust: Trust | None, limits: BundleLimits | None
                 ) -> ShadowSlot | None:
    """The station's shadow slot, with ``shadow.bundle`` running in it when set (a refusal is logged, not raised)."""
    from lineguard.edge.shadow import ShadowError, ShadowSlot

    sc = config.shadow
    slot = ShadowSlot(store, upload_dir=config.state_path / f"{config.station}.shadow", queue_size=sc.queue_size,
                      threads=sc.threads, nice=sc.nice, enabled=sc.enabled, trust=trust, limits=limits)
    if sc.enabled and sc.bundle:
        try:
            slot.install(sc.bundle, expected_digest=sc.digest)
        except ShadowError as exc:  # the challenger never acts on the line: a bad one must not stop it either
            log.error("shadow: %s; the station runs without a challenger", exc)
    return slot


def _reject_signal(sinks: Sequence[Any]) -> Any:
    """The hook the loop calls at once for a reject: every sink with ``signal_now`` (the PLC's reject coil)."""
    direct = [s for s in sinks if callable(getattr(s, "signal_now", None))]
    if not direct:
        return None

    def signal(rec: PredictionRecord) -> list[str]:
        sent = []
        for s in direct:
            try:
                s.signal_now(rec)
                sent.append(s.name)
            except LineguardError as exc:  # not sent now: its outbox row stays pending and is retried
                log.warning("reject signal to %s failed (the outbox retries it): %s", s.name, exc)
        return sent

    return signal


def _open_control(entry: ControlConfig, config: StationConfig, runtime: EdgeRuntime) -> Any:
    """A line input (MQTT topics or Modbus registers) that sets the runtime's recipe and triggers frames."""
    from lineguard.edge import sinks as sinks_mod

    def on_recipe(name: str) -> None:
        try:
            runtime.set_recipe(name)
        except LineguardError as exc:
            log.error("recipe from %s refused: %s", entry.kind, exc)

    options = entry.options()
    try:
        if entry.kind == "mqtt":
            return sinks_mod.MqttControl(station=config.station, on_recipe=on_recipe, on_trigger=runtime.trigger,
                                         **options)
        return sinks_mod.ModbusControl(recipes=runtime.predictor.bundle.recipes, on_recipe=on_recipe,
                                       on_trigger=runtime.trigger, **options)
    except TypeError as exc:  # an option the control does not take
        raise StationConfigError(f"controls: {entry.kind}: {exc}") from None
