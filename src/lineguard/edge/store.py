"""The edge's local store: every decision is written here first, before anything leaves the device.

One SQLite database in WAL mode (stdlib :mod:`sqlite3`) holds the prediction records
of DESIGN.md, the sampled images, operator feedback, the outbox the sinks deliver from
(:mod:`lineguard.edge.outbox`), the sync state (:mod:`lineguard.edge.sync`) and the
shadow comparisons of a challenger model (:mod:`lineguard.edge.shadow`). Each
:meth:`Store.record` is ONE transaction: the prediction row, its image when sampled,
and one outbox row per sink commit together or not at all, so a ``kill -9`` at any
instant leaves either the whole record or none of it, and a record is acknowledged
(``record`` returned) only once it is committed.

Why images are BLOBs in the database rather than files beside it: the image then
commits in the same transaction as its row -- there is no window where a row points
at a file that was never written, no orphan file after a crash to clean up, retention
deletes both at once, and ``PRAGMA integrity_check`` covers them. Sampled images are
small PNGs (tens of kB), well within what SQLite stores efficiently; the database is
created with ``auto_vacuum=INCREMENTAL`` so retention gives the space back to the OS.

Durability (``synchronous``): in WAL mode ``NORMAL`` makes every acknowledged record
survive a process kill (the committed WAL frames are in the OS page cache and are
replayed on the next open); after a power loss or an OS crash the last transactions
before the cut may be rolled back, but the database stays consistent. ``FULL`` also
fsyncs the WAL on every commit, so an acknowledged record survives power loss too (on
storage that honours flushes), at the cost of one fsync per decision. ``docs/runtime.md``
("The local store") states the policy in full, including the disk-full one.

Schema versions: a store written by an older LineGuard is migrated in place when it is
opened (one transaction; version 1 -> 2 adds the ``shadow`` table); one written by a
newer LineGuard is refused.

Imports the standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lineguard import LineguardError

__all__ = [
    "SCHEMA_VERSION",
    "PredictionRecord",
    "SamplePolicy",
    "ShadowResult",
    "Store",
    "StoreError",
]

SCHEMA_VERSION = 2
DECISIONS = ("accept", "reject")  # lineguard.edge.predictor ACCEPT / REJECT
SYNCHRONOUS = ("NORMAL", "FULL")
SAMPLING_LEVELS = ("full", "no_passes", "rejects_only", "none")  # best to worst
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_NOTE_CHARS = 2000
_STATION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    frame_id TEXT NOT NULL,
    time REAL NOT NULL,
    station TEXT NOT NULL,
    source TEXT NOT NULL,
    recipe TEXT,
    label TEXT NOT NULL,
    score REAL NOT NULL,
    decision TEXT NOT NULL,
    threshold REAL NOT NULL,
    bundle_name TEXT NOT NULL,
    bundle_version TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    stats TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX predictions_time ON predictions (time);
CREATE TABLE images (
    prediction_id INTEGER PRIMARY KEY,
    reason TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prediction_id INTEGER NOT NULL,
    prediction_key TEXT NOT NULL,
    station TEXT NOT NULL,
    label TEXT NOT NULL,
    source TEXT NOT NULL,
    note TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX feedback_prediction ON feedback (prediction_id);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    key TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL NOT NULL,
    sent_at REAL,
    UNIQUE (sink, key)
);
CREATE INDEX outbox_queue ON outbox (sink, status, id);
CREATE TABLE sync_cursor (kind TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
CREATE TABLE sync_batches (
    kind TEXT NOT NULL,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    object_key TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done')),
    created_at REAL NOT NULL,
    done_at REAL,
    PRIMARY KEY (kind, first_id)
);
"""

# Version 2: what a challenger bundle running in shadow (lineguard.edge.shadow) made of each champion decision
# it compared -- one row per compared frame, keyed by the champion's prediction row. Other tools read it by SQL
# (lineguard monitor report, lineguard monitor select): keep the names.
_SHADOW_SCHEMA = """
CREATE TABLE shadow (
    prediction_id INTEGER PRIMARY KEY,
    bundle_version TEXT NOT NULL,
    score REAL NOT NULL,
    decision TEXT NOT NULL,
    agree INTEGER NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX shadow_disagreements ON shadow (agree, prediction_id);
"""

# What opening a store of version k-1 runs to reach version k (in one transaction with the version bump).
_MIGRATIONS: dict[int, str] = {2: _SHADOW_SCHEMA}

# Counters kept in the meta table (they survive restarts; /metrics reads them).
_COUNTERS = (
    "images_skipped_disk",      # an image was offered but the disk policy refused it
    "images_failed_full",       # the image insert hit "disk full"; the row went in without it
    "outbox_full_dead",         # pending outbox rows marked dead because a sink's queue was at max_pending
    "retention_predictions",    # rows removed by retention (age or size)
    "retention_images",
    "retention_unsynced",       # of those, rows/images removed before sync had uploaded them (size limit)
)


class StoreError(LineguardError):
    """The store cannot be opened or written, or was given something it cannot hold."""


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One decided frame, as the edge writes it and every sink sends it.

    ``frame_id`` is unique per station (e.g. ``f"{run_start_ms}-{seq}"``); ``key`` =
    ``f"{station}:{frame_id}"`` is the idempotency key of the record everywhere (store,
    outbox, sinks, sync). ``time`` is unix seconds (UTC) when the frame was captured;
    ``stats`` are cheap image statistics for monitoring. ``station`` is a plain name
    (letters, digits, ``.``, ``_``, ``-``): it becomes part of MQTT topics and object keys.
    """

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
            "key": self.key,
            "frame_id": self.frame_id,
            "time": self.time,
            "station": self.station,
            "source": self.source,
            "recipe": self.recipe,
            "label": self.label,
            "score": self.score,
            "decision": self.decision,
            "threshold": self.threshold,
            "bundle_name": self.bundle_name,
            "bundle_version": self.bundle_version,
            "latency_ms": self.latency_ms,
            "stats": {str(k): _finite(float(v)) for k, v in self.stats.items()},
        }


@dataclass(frozen=True, slots=True)
class ShadowResult:
    """What a challenger in shadow made of one champion decision: one row of the ``shadow`` table.

    ``prediction_id`` is the champion's row in ``predictions``; ``bundle_version`` the
    challenger's; ``score`` and ``decision`` the challenger's on the same frame; ``agree``
    whether its decision is the champion's; ``time`` unix seconds when it was compared.
    """

    prediction_id: int
    bundle_version: str
    score: float
    decision: str
    agree: bool
    time: float

    def __post_init__(self) -> None:
        if int(self.prediction_id) < 1:
            raise StoreError(f"a shadow result needs the champion's prediction id (>= 1), got {self.prediction_id}")
        if not self.bundle_version or len(self.bundle_version) > 200:
            raise StoreError(f"the challenger's bundle_version must be 1-200 characters, got {self.bundle_version!r}")
        if self.decision not in DECISIONS:
            raise StoreError(f"decision '{self.decision}' is not one of {', '.join(DECISIONS)}")
        for name in ("score", "time"):
            if not math.isfinite(getattr(self, name)):
                raise StoreError(f"{name} must be a finite number, got {getattr(self, name)!r}")


@dataclass(frozen=True, slots=True)
class SamplePolicy:
    """Which frames keep their image: every reject, frames near the threshold, a share of passes.

    A frame is *low-confidence* when ``|score - threshold| <= low_confidence_band``.
    Passes are sampled by a hash of ``seed`` and the record's key, so the choice is
    deterministic (the same frame is chosen on every replay) and spread evenly.
    """

    rejects: bool = True
    low_confidence_band: float = 0.15
    pass_share: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_confidence_band <= 1.0:
            raise StoreError(f"low_confidence_band must be in [0, 1], got {self.low_confidence_band}")
        if not 0.0 <= self.pass_share <= 1.0:
            raise StoreError(f"pass_share must be in [0, 1], got {self.pass_share}")

    def reason(self, rec: PredictionRecord) -> str:
        """``reject``, ``low_confidence`` or ``pass``: the class the disk policy ranks images by."""
        if rec.decision == "reject":
            return "reject"
        if abs(rec.score - rec.threshold) <= self.low_confidence_band:
            return "low_confidence"
        return "pass"

    def wants(self, rec: PredictionRecord) -> bool:
        """Pure: should this record's image be kept (disk permitting)?"""
        if rec.decision == "reject" and self.rejects:
            return True
        if abs(rec.score - rec.threshold) <= self.low_confidence_band:
            return True
        if self.pass_share <= 0.0:
            return False
        digest = hashlib.blake2b(f"{self.seed}:{rec.key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") < self.pass_share * 2**64


# Why an image was kept besides the sample policy: the challenger in shadow decided the frame otherwise
# (lineguard.edge.shadow); such frames are the ones worth labelling, so the disk policy ranks them with
# the low-confidence ones.
SHADOW_REASON = "shadow_disagreement"

# Which image reasons each sampling level still keeps (the disk-full policy).
_KEEPS = {
    "full": ("reject", "low_confidence", SHADOW_REASON, "pass"),
    "no_passes": ("reject", "low_confidence", SHADOW_REASON),
    "rejects_only": ("reject",),
    "none": (),
}


def _disk_free(path: str) -> int:
    return int(shutil.disk_usage(path).free)


def _is_full_error(exc: sqlite3.Error) -> bool:
    return "full" in str(exc).lower() or getattr(exc, "sqlite_errorcode", None) == 13  # SQLITE_FULL


class Store:
    """The local store. ``Store(path)`` opens (or creates) the database file at ``path``.

    - ``synchronous``: ``"NORMAL"`` (survives process kills) or ``"FULL"`` (also power loss).
    - ``retention_days`` / ``max_bytes``: rows older than this, and the oldest images and
      rows once the database holds more than ``max_bytes``, are removed by
      :meth:`enforce_retention` (also run by :meth:`record` every ``housekeeping_s``).
    - ``sample``: the :class:`SamplePolicy` callers consult through :meth:`wants_image`.
    - ``min_free_bytes``: below this much free disk, sampling degrades (passes stop; at
      half, low-confidence frames stop; at a quarter, rejects stop); rows always go on.
    - ``max_pending``: per sink, at most this many pending outbox rows; beyond, the oldest
      are marked dead with reason ``outbox_full`` and counted.
    - ``disk_free`` / ``clock``: injectable (tests simulate a full disk and move time).

    Thread-safe: one writer connection behind a lock; reads use pooled connections of
    their own, so a long read never blocks a write (WAL).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        retention_days: float = 30.0,
        max_bytes: int = 2_000_000_000,
        sample: SamplePolicy | None = None,
        min_free_bytes: int = 256 * 2**20,
        max_pending: int = 1_000_000,
        housekeeping_s: float = 60.0,
        disk_free: Callable[[str], int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        sync_mode = str(synchronous).upper()
        if sync_mode not in SYNCHRONOUS:
            raise StoreError(f"synchronous '{synchronous}' is not supported; expected NORMAL or FULL "
                             "(OFF could lose acknowledged records)")
        if not retention_days > 0:
            raise StoreError(f"retention_days must be > 0, got {retention_days}")
        if max_bytes < 1_000_000:
            raise StoreError(f"max_bytes must be at least 1,000,000, got {max_bytes:,}")
        if min_free_bytes < 0 or max_pending < 1:
            raise StoreError("min_free_bytes must be >= 0 and max_pending >= 1")
        self.path = os.path.abspath(os.fspath(path))
        self.dir = os.path.dirname(self.path)
        self.synchronous = sync_mode
        self.retention_days = float(retention_days)
        self.max_bytes = int(max_bytes)
        self.sample = sample or SamplePolicy()
        self.min_free_bytes = int(min_free_bytes)
        self.max_pending = int(max_pending)
        self.housekeeping_s = float(housekeeping_s)
        self._disk_free = disk_free or _disk_free
        self.clock = clock
        self._lock = threading.RLock()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._last_write_error: str | None = None
        self._full_since: float | None = None  # a write hit "disk full"; cleared by the next full success
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store folder '{self.dir}': {exc.strerror or exc}") from None
        self._db = self._connect()
        try:
            self._open_schema()
            self._pending = self._load_pending()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"the store '{self.path}' is damaged (SQLite says: {exc}); move it aside "
                             "and start a new one, or restore it from a copy") from None
        except BaseException:
            self._db.close()
            raise
        self._next_housekeeping = time.monotonic() + self.housekeeping_s

    # --- connections ------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store '{self.path}': {exc}") from None
        try:
            con.execute("PRAGMA busy_timeout = 10000")
            # Takes effect only on a new, empty database (before WAL mode writes its first page).
            con.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"the store '{self.path}' cannot use WAL mode (got '{mode}'); "
                                 "it needs a local filesystem, not a network share")
            con.execute(f"PRAGMA synchronous = {self.synchronous}")
        except sqlite3.DatabaseError as exc:
            con.close()
            raise StoreError(f"'{self.path}' is not a LineGuard store (SQLite says: {exc})") from None
        return con

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A pooled read-only connection (for lineguard.edge modules: outbox, sync, API)."""
        self._check_open()
        with self._readers_lock:
            con = self._readers.pop() if self._readers else None
        if con is None:
            con = self._connect()
            con.execute("PRAGMA query_only = ON")
        try:
            yield con
        finally:
            if con.in_transaction:
                con.rollback()
            with self._readers_lock:
                if self._closed:
                    con.close()
                else:
                    self._readers.append(con)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The writer connection inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on any error)."""
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the store '{self.path}' is closed")

    def _open_schema(self) -> None:
        db = self._db
        try:
            has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
            if has_meta is None:
                others = db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
                if others:
                    raise StoreError(f"'{self.path}' is an SQLite database but not a LineGuard store "
                                     f"(it has tables {', '.join(r[0] for r in others[:5])}, no 'meta')")
                db.execute("BEGIN IMMEDIATE")
                for stmt in (_SCHEMA + _SHADOW_SCHEMA).split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                db.execute("INSERT INTO meta VALUES ('created_at', ?)", (repr(self.clock()),))
                for name in _COUNTERS:
                    db.execute("INSERT INTO meta VALUES (?, '0')", (name,))
                db.execute("COMMIT")
                return
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"'{self.path}' is not a readable LineGuard store (SQLite says: {exc})") from None
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(f"the store '{self.path}' has schema version {version}, written by a newer "
                             f"LineGuard; this one reads up to version {SCHEMA_VERSION}")
        if version < 1:
            raise StoreError(f"the store '{self.path}' has no valid schema version in its meta table")
        if version < SCHEMA_VERSION:
            self._migrate()

    def _migrate(self) -> None:
        """Bring an older store to :data:`SCHEMA_VERSION` in place: one transaction, every row kept.

        The version is read again inside the write transaction, so two processes opening the same
        old store at once migrate it once. A failure rolls back to the old version untouched.
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            version = int(db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in _MIGRATIONS[target].split(";"):
                    if stmt.strip():
                        db.execute(stmt)
            db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
            db.execute("INSERT INTO meta VALUES ('migrated_from', ?) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                       (str(version),))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise StoreError(f"cannot migrate the store '{self.path}' to schema version {SCHEMA_VERSION} "
                             f"(SQLite says: {exc}); it is unchanged -- check that its folder is writable") from None
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def _load_pending(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT sink, COUNT(*) FROM outbox WHERE status='pending' GROUP BY sink").fetchall()
        return {str(s): int(n) for s, n in rows}

    def close(self) -> None:
        """Close every connection (after a final passive checkpoint); further calls raise StoreError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with self._readers_lock:  # readers first: the last connection to close checkpoints the WAL
                for con in self._readers:
                    con.close()
                self._readers.clear()
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the disk policy --------------------------------------------------------------------------

    def disk_free_bytes(self) -> int:
        """Free bytes on the store's filesystem (through the injectable ``disk_free``)."""
        try:
            return int(self._disk_free(self.dir))
        except OSError:
            return 0

    def db_bytes(self) -> int:
        """Bytes the database takes on disk now (main file plus WAL)."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(self.path + suffix)
        return total

    def sampling_level(self) -> str:
        """``full`` / ``no_passes`` / ``rejects_only`` / ``none``: which images the disk allows now.

        Passes stop first (free disk under ``min_free_bytes`` or the database over
        ``max_bytes``), then low-confidence frames (under half), then rejects (under a
        quarter); a "disk full" error on the last image write also counts as ``none``
        until an image write succeeds again (tried whenever free space is back above the floor).
        """
        free = self.disk_free_bytes()
        floor = self.min_free_bytes
        if free < floor / 4 or (self._full_since is not None and free < floor):
            return "none"
        if free < floor / 2:
            return "rejects_only"
        if free < floor or self.db_bytes() > self.max_bytes:
            return "no_passes"
        return "full"

    def wants_image(self, rec: PredictionRecord) -> bool:
        """Should the caller encode and pass this record's image? The sample policy AND the disk policy."""
        return self.sample.wants(rec) and self.sample.reason(rec) in _KEEPS[self.sampling_level()]

    # --- writing ----------------------------------------------------------------------------------

    def record(
        self,
        rec: PredictionRecord,
        image_png: bytes | None = None,
        sinks: Sequence[str] = (),
        sent: Sequence[str] = (),
    ) -> int:
        """Write one decision in ONE transaction; returns the prediction's row id.

        The row, the image (when given and the disk policy allows its kind), one
        ``pending`` outbox row per name in ``sinks`` and one already-``sent`` row per name
        in ``sent`` (the reject signal that went out at once). Idempotent on ``rec.key``:
        a second call returns the existing id and writes nothing. When the image insert
        hits "disk full", the record is written again without its image (the row goes
        on, the image is counted as lost); when the row itself cannot be written, raises
        :class:`StoreError` and the caller decides (``health()`` says why).
        """
        return self.record_many([(rec, image_png)], sinks=sinks, sent=sent)[0]

    def record_many(
        self,
        items: Sequence[tuple[PredictionRecord, bytes | None]],
        sinks: Sequence[str] = (),
        sent: Sequence[str] = (),
    ) -> list[int]:
        """:meth:`record` for several decisions in ONE transaction (one commit: the fast path for a busy loop).

        All of them are acknowledged together when this returns; ``sinks`` and ``sent``
        apply to every record. Returns the row ids in the order given.
        """
        sinks, sent = list(dict.fromkeys(sinks)), list(dict.fromkeys(sent))
        overlap = set(sinks) & set(sent)
        if overlap:
            raise StoreError(f"sink(s) {', '.join(sorted(overlap))} listed both as pending and as sent")
        level = self.sampling_level() if any(img is not None for _, img in items) else "full"
        rows: list[tuple[PredictionRecord, str, bytes | None, str]] = []
        skipped = 0
        for rec, image_png in items:
            if image_png is not None and not image_png.startswith(PNG_MAGIC):
                raise StoreError(f"the image for {rec.key} is not a PNG (expected PNG bytes, got "
                                 f"{image_png[:8]!r}...)")
            reason = self.sample.reason(rec)
            keep = image_png is not None and reason in _KEEPS[level]
            skipped += image_png is not None and not keep
            payload = json.dumps(rec.to_dict(), separators=(",", ":"), allow_nan=False)
            rows.append((rec, payload, image_png if keep else None, reason))
        with_images = any(r[2] is not None for r in rows)
        try:
            ids = self._record_tx(rows, sinks, sent, skipped, 0)
            if with_images:
                self._full_since = None
        except sqlite3.Error as exc:
            if not (with_images and _is_full_error(exc)):
                self._last_write_error = f"{type(exc).__name__}: {exc}"
                raise StoreError(f"cannot write record {rows[0][0].key if rows else '-'} to the store "
                                 f"'{self.path}': {exc}") from None
            self._full_since = self._full_since or self.clock()
            lost = sum(r[2] is not None for r in rows)
            try:
                ids = self._record_tx([(r[0], r[1], None, r[3]) for r in rows], sinks, sent, skipped, lost)
            except sqlite3.Error as exc2:
                self._last_write_error = f"{type(exc2).__name__}: {exc2}"
                raise StoreError(f"cannot write record {rows[0][0].key} to the store '{self.path}': {exc2}") from None
        self._last_write_error = None
        if time.monotonic() >= self._next_housekeeping:
            self._next_housekeeping = time.monotonic() + self.housekeeping_s
            with contextlib.suppress(StoreError, sqlite3.Error):
                self.enforce_retention(limit=5000)
        return ids

    def _record_tx(
        self,
        rows: Sequence[tuple[PredictionRecord, str, bytes | None, str]],
        sinks: Sequence[str],
        sent: Sequence[str],
        skipped: int,
        failed_full: int,
    ) -> list[int]:
        with self._lock:  # held from reading the pending counts to updating them
            return self._record_locked(rows, sinks, sent, skipped, failed_full)

    def _record_locked(
        self,
        rows: Sequence[tuple[PredictionRecord, str, bytes | None, str]],
        sinks: Sequence[str],
        sent: Sequence[str],
        skipped: int,
        failed_full: int,
    ) -> list[int]:
        now = self.clock()
        pending = {sink: self._pending.get(sink, 0) for sink in sinks}
        dead_over = 0
        ids: list[int] = []
        with self.transaction() as db:
            for rec, payload, image, reason in rows:
                row = db.execute(
                    "INSERT INTO predictions (key, frame_id, time, station, source, recipe, label, score, decision,"
                    " threshold, bundle_name, bundle_version, latency_ms, stats, created_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (key) DO NOTHING RETURNING id",
                    (rec.key, rec.frame_id, rec.time, rec.station, rec.source, rec.recipe, rec.label, rec.score,
                     rec.decision, rec.threshold, rec.bundle_name, rec.bundle_version, rec.latency_ms,
                     json.dumps(rec.to_dict()["stats"], allow_nan=False), now),
                ).fetchone()
                if row is None:  # already recorded: idempotent, write nothing for it
                    ids.append(int(db.execute("SELECT id FROM predictions WHERE key=?", (rec.key,)).fetchone()[0]))
                    continue
                rid = int(row[0])
                ids.append(rid)
                if image is not None:
                    db.execute("INSERT INTO images VALUES (?,?,?,?)", (rid, reason, len(image), image))
                for sink in sinks:
                    db.execute("INSERT INTO outbox (sink, key, payload, status, created_at)"
                               " VALUES (?,?,?,'pending',?)", (sink, rec.key, payload, now))
                    pending[sink] += 1
                    if pending[sink] > self.max_pending:  # the stated bound: the OLDEST pending row dies
                        over = pending[sink] - self.max_pending
                        cur = db.execute(
                            "UPDATE outbox SET status='dead', last_error='outbox_full' WHERE id IN (SELECT id"
                            " FROM outbox WHERE sink=? AND status='pending' ORDER BY id LIMIT ?)", (sink, over))
                        pending[sink] -= cur.rowcount
                        dead_over += cur.rowcount
                for sink in sent:
                    db.execute("INSERT INTO outbox (sink, key, payload, status, attempts, created_at, sent_at)"
                               " VALUES (?,?,?,'sent',1,?,?)", (sink, rec.key, payload, now, now))
            if skipped:
                self._bump(db, "images_skipped_disk", skipped)
            if failed_full:
                self._bump(db, "images_failed_full", failed_full)
            if dead_over:
                self._bump(db, "outbox_full_dead", dead_over)
        self._pending.update(pending)  # committed: now the in-memory counts follow
        return ids

    @staticmethod
    def _bump(db: sqlite3.Connection, name: str, by: int = 1) -> None:
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key=?", (by, name))

    def add_alert(self, key: str, payload: Mapping[str, Any], sinks: Sequence[str]) -> int:
        """Queue an alert (a drift alarm) to each sink through the outbox; returns the rows queued.

        One transaction; idempotent on ``key`` per sink (an alert already queued is not queued
        again). The payload goes out as JSON with ``"kind": "alert"`` and the key.
        """
        body = json.dumps({**payload, "kind": "alert", "key": key}, allow_nan=False, default=str)
        now, added = self.clock(), []
        with self._lock, self.transaction() as db:
            for sink in sinks:
                if db.execute("SELECT 1 FROM outbox WHERE sink=? AND key=?", (sink, key)).fetchone():
                    continue
                db.execute("INSERT INTO outbox (sink, key, payload, status, created_at) VALUES (?,?,?,'pending',?)",
                           (sink, key, body, now))
                added.append(sink)
            for sink in added:  # committed with the rows (the lock is held until then)
                self._pending[sink] = self._pending.get(sink, 0) + 1
        return len(added)

    def wants_shadow_image(self, prediction_id: int) -> bool:
        """Should the shadow worker encode this frame's image? Not when the frame already has one, nor when
        the disk policy no longer keeps disagreements (the PNG would be encoded for nothing)."""
        if SHADOW_REASON not in _KEEPS[self.sampling_level()]:
            return False
        with self.read() as con:
            return con.execute("SELECT 1 FROM images WHERE prediction_id=?", (int(prediction_id),)).fetchone() is None

    def record_shadow(self, results: Sequence[tuple[ShadowResult, bytes | None]]) -> dict[str, int]:
        """Write a challenger's comparisons in ONE transaction; returns ``written``, ``images`` and ``skipped``.

        One ``shadow`` row per result (idempotent on ``prediction_id``; a result whose prediction
        is gone -- retention -- is skipped and counted in ``skipped``). A disagreement's PNG, when
        given, is kept as the frame's image with reason ``shadow_disagreement`` unless the frame
        already has one or the disk policy refuses it (counted in ``images_skipped_disk``); on
        "disk full" the rows go in without their images.
        """
        rows: list[tuple[ShadowResult, bytes | None]] = []
        for res, image_png in results:
            if image_png is not None and not image_png.startswith(PNG_MAGIC):
                raise StoreError(f"the image for shadow result {res.prediction_id} is not a PNG")
            rows.append((res, image_png if not res.agree else None))
        if not rows:
            return {"written": 0, "images": 0, "skipped": 0}
        keep = any(img is not None for _, img in rows) and SHADOW_REASON in _KEEPS[self.sampling_level()]
        try:
            return self._shadow_tx(rows, keep)
        except sqlite3.Error as exc:
            if not (keep and _is_full_error(exc)):
                self._last_write_error = f"{type(exc).__name__}: {exc}"
                raise StoreError(f"cannot write {len(rows)} shadow result(s) to the store '{self.path}': {exc}") from None
            self._full_since = self._full_since or self.clock()
            try:
                return self._shadow_tx(rows, False)
            except sqlite3.Error as exc2:
                self._last_write_error = f"{type(exc2).__name__}: {exc2}"
                raise StoreError(f"cannot write shadow results to the store '{self.path}': {exc2}") from None

    def _shadow_tx(self, rows: Sequence[tuple[ShadowResult, bytes | None]], keep_images: bool) -> dict[str, int]:
        out = {"written": 0, "images": 0, "skipped": 0}
        refused = 0
        with self.transaction() as db:
            for res, image in rows:
                cur = db.execute(
                    "INSERT INTO shadow (prediction_id, bundle_version, score, decision, agree, time)"
                    " SELECT ?,?,?,?,?,? WHERE EXISTS (SELECT 1 FROM predictions WHERE id=?)"
                    " ON CONFLICT (prediction_id) DO NOTHING",
                    (int(res.prediction_id), res.bundle_version, float(res.score), res.decision, int(bool(res.agree)),
                     float(res.time), int(res.prediction_id)))
                if cur.rowcount != 1:
                    out["skipped"] += 1
                    continue
                out["written"] += 1
                if image is None:
                    continue
                if not keep_images:
                    refused += 1
                    continue
                out["images"] += db.execute(
                    "INSERT INTO images VALUES (?,?,?,?) ON CONFLICT (prediction_id) DO NOTHING",
                    (int(res.prediction_id), SHADOW_REASON, len(image), image)).rowcount
            if refused:
                self._bump(db, "images_skipped_disk", refused)
        return out

    def add_feedback(self, prediction_id: int, label: str, *, source: str = "operator", note: str = "") -> int:
        """Record an operator's true label for a prediction; returns the feedback id (sync uploads it)."""
        label = str(label).strip()
        if not label or len(label) > 100:
            raise StoreError(f"feedback label must be 1-100 characters, got {label!r}")
        if not source or len(source) > 100:
            raise StoreError(f"feedback source must be 1-100 characters, got {source!r}")
        if len(note) > MAX_NOTE_CHARS:
            raise StoreError(f"feedback note is {len(note)} characters; at most {MAX_NOTE_CHARS} are kept")
        with self.transaction() as db:
            row = db.execute("SELECT key, station FROM predictions WHERE id=?", (int(prediction_id),)).fetchone()
            if row is None:
                raise StoreError(f"no prediction with id {prediction_id} in the store (it may have been "
                                 "removed by retention)")
            cur = db.execute(
                "INSERT INTO feedback (prediction_id, prediction_key, station, label, source, note, time)"
                " VALUES (?,?,?,?,?,?,?)", (int(prediction_id), row[0], row[1], label, source, note, self.clock()))
            return int(cur.lastrowid or 0)

    # --- reading ----------------------------------------------------------------------------------

    _COLUMNS = ("id, key, frame_id, time, station, source, recipe, label, score, decision, threshold,"
                " bundle_name, bundle_version, latency_ms, stats,"
                " EXISTS (SELECT 1 FROM images i WHERE i.prediction_id = p.id) AS image")

    @staticmethod
    def _row_dict(cur: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
        d = {c[0]: v for c, v in zip(cur.description, row, strict=True)}
        if "stats" in d:
            d["stats"] = json.loads(d["stats"])
        if "image" in d:
            d["image"] = bool(d["image"])
        return d

    def prediction(self, id: int) -> dict[str, Any] | None:
        """One prediction as a dict (``image`` says whether its image is kept), or None."""
        with self.read() as con:
            cur = con.execute(f"SELECT {self._COLUMNS} FROM predictions p WHERE id=?", (int(id),))
            row = cur.fetchone()
            return None if row is None else self._row_dict(cur, row)

    def predictions(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        recipe: str | None = None,
        decision: str | None = None,
        limit: int = 100,
        after_id: int | None = None,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Predictions filtered by capture time ``[since, until)``, recipe and decision, in id order.

        Page forward with ``after_id`` = the last id seen; ``newest_first`` reverses the order.
        """
        if not 1 <= int(limit) <= 10_000:
            raise StoreError(f"limit must be between 1 and 10,000, got {limit}")
        if decision is not None and decision not in DECISIONS:
            raise StoreError(f"decision filter '{decision}' is not one of {', '.join(DECISIONS)}")
        where, args = [], []  # type: ignore[var-annotated]
        for cond, value in (("time >= ?", since), ("time < ?", until), ("recipe = ?", recipe),
                            ("decision = ?", decision), ("id > ?", after_id)):
            if value is not None:
                where.append(cond)
                args.append(value)
        sql = f"SELECT {self._COLUMNS} FROM predictions p"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY id {'DESC' if newest_first else 'ASC'} LIMIT ?"
        with self.read() as con:
            cur = con.execute(sql, (*args, int(limit)))
            return [self._row_dict(cur, r) for r in cur.fetchall()]

    def image(self, id: int) -> bytes | None:
        """The sampled PNG of prediction ``id``, or None when it was not kept."""
        with self.read() as con:
            row = con.execute("SELECT data FROM images WHERE prediction_id=?", (int(id),)).fetchone()
            return None if row is None else bytes(row[0])

    def feedback(self, *, prediction_id: int | None = None, after_id: int | None = None,
                 limit: int = 100) -> list[dict[str, Any]]:
        """Feedback rows in id order, optionally for one prediction."""
        if not 1 <= int(limit) <= 10_000:
            raise StoreError(f"limit must be between 1 and 10,000, got {limit}")
        sql, args = "SELECT * FROM feedback WHERE id > ?", [after_id or 0]
        if prediction_id is not None:
            sql += " AND prediction_id = ?"
            args.append(int(prediction_id))
        with self.read() as con:
            cur = con.execute(sql + " ORDER BY id LIMIT ?", (*args, int(limit)))
            return [self._row_dict(cur, r) for r in cur.fetchall()]

    def shadow_rows(self, *, disagreements_only: bool = False, since_id: int = 0,
                    limit: int = 1000) -> list[dict[str, Any]]:
        """Shadow comparisons in prediction-id order after ``since_id``, each beside the champion's decision.

        Each row: the ``shadow`` columns (``agree`` as a bool), the frame's ``recipe``, the
        champion's ``champion_score``, ``champion_decision`` and ``champion_version``, and
        ``image`` (whether the frame's image is kept). ``disagreements_only`` keeps the frames
        worth labelling. Page on with ``since_id`` = the last ``prediction_id`` seen.
        """
        if not 1 <= int(limit) <= 10_000:
            raise StoreError(f"limit must be between 1 and 10,000, got {limit}")
        sql = ("SELECT s.prediction_id, s.bundle_version, s.score, s.decision, s.agree, s.time, p.recipe,"
               " p.score AS champion_score, p.decision AS champion_decision, p.bundle_version AS champion_version,"
               " EXISTS (SELECT 1 FROM images i WHERE i.prediction_id = s.prediction_id) AS image"
               " FROM shadow s JOIN predictions p ON p.id = s.prediction_id WHERE s.prediction_id > ?"
               + (" AND s.agree = 0" if disagreements_only else "") + " ORDER BY s.prediction_id LIMIT ?")
        with self.read() as con:
            cur = con.execute(sql, (int(since_id), int(limit)))
            rows = [self._row_dict(cur, r) for r in cur.fetchall()]
        for row in rows:
            row["agree"] = bool(row["agree"])
        return rows

    def meta(self) -> dict[str, str]:
        """The meta table (schema version, creation time, persistent counters)."""
        with self.read() as con:
            return {str(k): str(v) for k, v in con.execute("SELECT key, value FROM meta")}

    def counts(self) -> dict[str, Any]:
        """Counters for /metrics, read from the database (so they survive restarts)."""
        with self.read() as con:
            by_decision = dict.fromkeys(DECISIONS, 0)
            for d, n in con.execute("SELECT decision, COUNT(*) FROM predictions GROUP BY decision"):
                by_decision[str(d)] = int(n)
            images = {str(r): int(n) for r, n in con.execute("SELECT reason, COUNT(*) FROM images GROUP BY reason")}
            outbox: dict[str, dict[str, int]] = {}
            for sink, status, n in con.execute("SELECT sink, status, COUNT(*) FROM outbox GROUP BY sink, status"):
                outbox.setdefault(str(sink), {"pending": 0, "sent": 0, "dead": 0})[str(status)] = int(n)
            feedback = int(con.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])
            compared, agreed = con.execute("SELECT COUNT(*), COALESCE(SUM(agree), 0) FROM shadow").fetchone()
            meta = {str(k): str(v) for k, v in con.execute("SELECT key, value FROM meta")}
        return {
            "predictions": sum(by_decision.values()),
            "decisions": by_decision,
            "images": images,
            "feedback": feedback,
            "outbox": outbox,
            "shadow": {"compared": int(compared), "disagreements": int(compared) - int(agreed)},
            **{name: int(meta.get(name, "0")) for name in _COUNTERS},
        }

    # --- the outbox's queue (used by lineguard.edge.outbox) ---------------------------------------

    def outbox_pending(self, sink: str, limit: int = 100) -> list[Any]:
        """The oldest pending messages of ``sink``, in id order (:class:`~lineguard.edge.outbox.OutboxMessage`)."""
        from lineguard.edge.outbox import OutboxMessage

        with self.read() as con:
            rows = con.execute(
                "SELECT id, sink, key, payload, attempts, created_at, next_attempt_at FROM outbox"
                " WHERE sink=? AND status='pending' ORDER BY id LIMIT ?", (sink, int(limit))).fetchall()
        return [OutboxMessage(int(r[0]), str(r[1]), str(r[2]), json.loads(r[3]), int(r[4]), float(r[5]),
                              float(r[6])) for r in rows]

    def outbox_status(self, message_id: int) -> str | None:
        """``pending`` / ``sent`` / ``dead`` for one outbox row, or None when it is gone."""
        with self.read() as con:
            row = con.execute("SELECT status FROM outbox WHERE id=?", (int(message_id),)).fetchone()
        return None if row is None else str(row[0])

    def outbox_ack(self, message_id: int) -> None:
        """Mark a message delivered (even if it had meanwhile been marked dead by the size bound)."""
        self._outbox_finish(message_id, "sent", None)

    def outbox_retry(self, message_id: int, error: str, next_attempt_at: float) -> None:
        """A transient failure: count the attempt, remember the error and when to try again."""
        with self.transaction() as db:
            db.execute("UPDATE outbox SET attempts=attempts+1, last_error=?, next_attempt_at=? WHERE id=?"
                       " AND status='pending'", (error[:500], float(next_attempt_at), int(message_id)))

    def outbox_dead(self, message_id: int, error: str) -> None:
        """A permanent rejection: the message is dead (counted; never retried); order goes on."""
        self._outbox_finish(message_id, "dead", error[:500])

    def _outbox_finish(self, message_id: int, status: str, error: str | None) -> None:
        with self._lock:  # the pending count follows the commit, with no writer in between
            with self.transaction() as db:
                row = db.execute("SELECT sink, status FROM outbox WHERE id=?", (int(message_id),)).fetchone()
                if row is None or (status == "dead" and row[1] != "pending"):
                    return
                db.execute("UPDATE outbox SET status=?, attempts=attempts+1, last_error=?, sent_at=? WHERE id=?",
                           (status, error, self.clock() if status == "sent" else None, int(message_id)))
            if row[1] == "pending":
                self._pending[row[0]] = self._pending.get(row[0], 1) - 1

    def outbox_backlog(self, sink: str | None = None) -> int:
        """Pending messages of one sink (or all sinks), from the in-memory count kept with each commit."""
        with self._lock:
            return sum(self._pending.values()) if sink is None else self._pending.get(sink, 0)

    # --- sync state (used by lineguard.edge.sync) ---------------------------------------------------

    def sync_cursors(self) -> dict[str, int]:
        """``kind -> last uploaded id`` for the kinds a Sync has registered (empty when none)."""
        with self.read() as con:
            return {str(k): int(v) for k, v in con.execute("SELECT kind, last_id FROM sync_cursor")}

    def sync_backlog(self) -> dict[str, int] | None:
        """Rows/images not yet uploaded per kind, or None when no Sync was ever set up on this store."""
        cursors = self.sync_cursors()
        if not cursors:
            return None
        queries = {"records": "SELECT COUNT(*) FROM predictions WHERE id > ?",
                   "feedback": "SELECT COUNT(*) FROM feedback WHERE id > ?",
                   "images": "SELECT COUNT(*) FROM images WHERE prediction_id > ?"}
        with self.read() as con:
            return {kind: int(con.execute(q, (cursors.get(kind, 0),)).fetchone()[0])
                    for kind, q in queries.items()}

    # --- health, integrity, retention ---------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``status`` ok|degraded with ``reasons``, disk free, db bytes, sampling level, backlogs."""
        free, db_bytes, level = self.disk_free_bytes(), self.db_bytes(), self.sampling_level()
        reasons: list[str] = []
        if free < self.min_free_bytes:
            reasons.append(f"disk_low: {free:,} bytes free, under the floor of {self.min_free_bytes:,}; "
                           f"image sampling is '{level}'")
        if self._full_since is not None:
            reasons.append("disk_full: the last image write failed with 'disk full'; images paused")
        if db_bytes > self.max_bytes:
            reasons.append(f"store_over_size: {db_bytes:,} bytes, over max_bytes {self.max_bytes:,}; "
                           "retention is removing the oldest images and rows")
        if self._last_write_error:
            reasons.append(f"write_failed: {self._last_write_error}")
        return {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "disk_free_bytes": free,
            "min_free_bytes": self.min_free_bytes,
            "db_bytes": db_bytes,
            "max_bytes": self.max_bytes,
            "sampling": level,
            "outbox_backlog": self._pending_copy(),
            "sync_backlog": self.sync_backlog(),
        }

    def _pending_copy(self) -> dict[str, int]:
        with self._lock:
            return dict(self._pending)

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` on a fresh connection: ``"ok"`` or SQLite's description of the damage."""
        try:
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10.0)
        except sqlite3.Error as exc:
            return f"cannot open: {exc}"
        try:
            rows = con.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.DatabaseError as exc:
            return str(exc)
        finally:
            con.close()
        lines = [str(r[0]) for r in rows]
        return "ok" if lines == ["ok"] else "; ".join(lines[:20])

    def enforce_retention(self, limit: int | None = None) -> dict[str, int]:
        """Remove what retention says must go; returns what was removed.

        Age: predictions (with their images), feedback and delivered/dead outbox rows older
        than ``retention_days`` -- except records a Sync has not uploaded yet, which are held.
        A prediction's shadow comparison goes with it.
        Size: while the data exceed ``max_bytes``, the oldest images go first (already
        uploaded ones before the others), then the oldest rows; anything removed before
        its upload is counted in ``retention_unsynced``. Pending outbox rows are never
        removed here (their bound is ``max_pending``). ``limit`` caps the rows per call.
        """
        cutoff = self.clock() - self.retention_days * 86400.0
        cursors = self.sync_cursors()
        held = cursors.get("records") if cursors else None
        held_images = cursors.get("images") if cursors else None
        held_feedback = cursors.get("feedback") if cursors else None
        budget = limit if limit is not None else 1 << 62
        out = {"predictions": 0, "images": 0, "feedback": 0, "outbox": 0, "unsynced": 0}
        chunk = 500

        def take(n: int) -> int:
            return max(0, min(chunk, budget - out["predictions"] - out["images"], n))

        # Age: whole records older than the cutoff, once uploaded (records and images) or with no sync.
        age_bound = min(held if held is not None else 1 << 62, held_images if held_images is not None else 1 << 62)
        while (n := take(chunk)) > 0:
            with self.transaction() as db:
                ids = [r[0] for r in db.execute(
                    "SELECT id FROM predictions WHERE time < ? AND id <= ? ORDER BY id LIMIT ?",
                    (cutoff, age_bound, n))]
                if not ids:
                    break
                marks = ",".join("?" * len(ids))
                out["images"] += db.execute(f"DELETE FROM images WHERE prediction_id IN ({marks})", ids).rowcount
                db.execute(f"DELETE FROM shadow WHERE prediction_id IN ({marks})", ids)
                out["predictions"] += db.execute(f"DELETE FROM predictions WHERE id IN ({marks})", ids).rowcount
                self._bump(db, "retention_predictions", len(ids))
        with self.transaction() as db:
            fb_bound = held_feedback if held_feedback is not None else 1 << 62
            out["feedback"] += db.execute("DELETE FROM feedback WHERE time < ? AND id <= ?",
                                          (cutoff, fb_bound)).rowcount
            out["outbox"] += db.execute("DELETE FROM outbox WHERE status != 'pending' AND created_at < ?",
                                        (cutoff,)).rowcount
            db.execute("DELETE FROM sync_batches WHERE status = 'done' AND done_at < ?", (cutoff,))
        # Size: images first (uploaded ones first), then rows.
        order = [("images", "synced"), ("images", "any"), ("predictions", "synced"), ("predictions", "any")]
        for table, which in order:
            while (over := self._used_bytes() - self.max_bytes) > 0 and (n := take(chunk)) > 0:
                with self.transaction() as db:
                    if table == "images":
                        bound = held_images if (which == "synced" and held_images is not None) else 1 << 62
                        ids, freed = [], 0
                        for pid, size in db.execute(
                                "SELECT prediction_id, size_bytes FROM images WHERE prediction_id <= ? ORDER BY "
                                "prediction_id LIMIT ?", (bound, n)):
                            ids.append(pid)
                            freed += size
                            if freed >= over:  # just enough of the oldest images, not a whole chunk
                                break
                        if not ids:
                            break
                        marks = ",".join("?" * len(ids))
                        gone = db.execute(f"DELETE FROM images WHERE prediction_id IN ({marks})", ids).rowcount
                        out["images"] += gone
                        self._bump(db, "retention_images", gone)
                        lost = sum(1 for i in ids if held_images is not None and i > held_images)
                    else:
                        bound = held if (which == "synced" and held is not None) else 1 << 62
                        rows_needed = max(1, min(n, over // 256 + 1))  # a row takes a few hundred bytes
                        ids = [r[0] for r in db.execute(
                            "SELECT id FROM predictions WHERE id <= ? ORDER BY id LIMIT ?", (bound, rows_needed))]
                        if not ids:
                            break
                        marks = ",".join("?" * len(ids))
                        out["images"] += db.execute(f"DELETE FROM images WHERE prediction_id IN ({marks})",
                                                    ids).rowcount
                        db.execute(f"DELETE FROM shadow WHERE prediction_id IN ({marks})", ids)
                        gone = db.execute(f"DELETE FROM predictions WHERE id IN ({marks})", ids).rowcount
                        out["predictions"] += gone
                        self._bump(db, "retention_predictions", gone)
                        lost = sum(1 for i in ids if held is not None and i > held)
                    if lost:
                        out["unsynced"] += lost
                        self._bump(db, "retention_unsynced", lost)
        if any(out.values()):
            with self._lock, contextlib.suppress(sqlite3.Error):
                # execute() steps this pragma once (one page); executescript() runs it to the end.
                self._db.executescript("PRAGMA incremental_vacuum;")
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return out

    def _used_bytes(self) -> int:
        """Bytes of live data in the database (pages in use, without the free list)."""
        with self._lock:
            page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
            free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * page_size

