"""Store-and-forward to blob storage: the local store's records, feedback and images, uploaded exactly once.

Everything goes through :mod:`lineguard.storage` (fsspec): a local folder, ``s3://``
(an S3-compatible server via ``AWS_ENDPOINT_URL``), ``az://`` / ``gs://`` with their
extras. The remote layout, under the sync URL::

    {station}/records/{first_id:012d}-{last_id:012d}.jsonl   prediction records, one JSON object a line
    {station}/feedback/{first_id:012d}-{last_id:012d}.jsonl  operator feedback
    {station}/images/{prediction_id}.png                     sampled images

Why it loses and doubles nothing (R7): a batch's boundaries are chosen once and
committed to the store (``sync_batches``) BEFORE its upload starts, so a retry after a
network cut or a ``kill -9`` rewrites the same object with the same rows -- never a
second object overlapping the first. An object is written in one PUT (whole or not at
all) and the cursor moves past it only after the write returned. Images have one key
per prediction id, so a re-upload overwrites itself. What is not uploaded yet is the
*backlog*: it lives in the local store and is bounded by the store's own limits (see
``docs/runtime.md``, "Sync to blob storage"). One Sync per store at a time.

Imports the standard library and :mod:`lineguard.storage` only (fsspec inside it).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lineguard import LineguardError, storage

if TYPE_CHECKING:
    import sqlite3

    from lineguard.edge.store import Store

__all__ = ["Sync"]

KINDS = ("records", "feedback", "images")
_ROWS = {
    "records": ("predictions",
                "SELECT p.id, p.key, p.frame_id, p.time, p.station, p.source, p.recipe, p.label, p.score,"
                " p.decision, p.threshold, p.bundle_name, p.bundle_version, p.latency_ms, p.stats,"
                " EXISTS (SELECT 1 FROM images i WHERE i.prediction_id = p.id) AS image"
                " FROM predictions p WHERE p.id BETWEEN ? AND ? ORDER BY p.id"),
    "feedback": ("feedback",
                 "SELECT id, prediction_id, prediction_key, station, label, source, note, time"
                 " FROM feedback WHERE id BETWEEN ? AND ? ORDER BY id"),
}


@dataclass(frozen=True)
class _Batch:
    kind: str
    first_id: int
    last_id: int
    object_key: str


class Sync:
    """Uploads the store's records, feedback and sampled images to ``url`` in fixed batches.

    ``batch``: at most this many rows per records/feedback object (and images per pass);
    ``interval_s``: the pause between passes of the background thread (:meth:`start`);
    ``max_batches``: objects of each kind per :meth:`run_once`, so one pass stays short.
    Creating a Sync registers its cursors in the store, from then on retention holds
    every record until it is uploaded.
    """

    def __init__(self, store: Store, url: str, *, batch: int = 500, interval_s: float = 10.0,
                 max_batches: int = 20) -> None:
        if not url or not str(url).strip():
            raise LineguardError("sync url is empty; expected a folder or an s3:// / az:// / gs:// URL")
        if batch < 1 or interval_s <= 0 or max_batches < 1:
            raise LineguardError(f"sync batch and max_batches must be >= 1 and interval_s > 0, got batch={batch}, "
                                 f"interval_s={interval_s}, max_batches={max_batches}")
        self.store, self.url = store, str(url).rstrip("/") if "://" in str(url) else str(url)
        self.batch, self.interval_s, self.max_batches = int(batch), float(interval_s), int(max_batches)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.last_result: dict[str, Any] | None = None
        self.uploaded_objects = 0
        with store.transaction() as db:
            for kind in KINDS:
                db.execute("INSERT INTO sync_cursor (kind, last_id) VALUES (?, 0) ON CONFLICT (kind) DO NOTHING",
                           (kind,))

    # --- one pass ---------------------------------------------------------------------------------

    def run_once(self) -> dict[str, Any]:
        """Upload what is waiting (up to ``max_batches`` objects per kind); never raises for I/O.

        Returns ``{"records": rows, "feedback": rows, "images": n, "objects": n, "error": str|None,
        "backlog": n}``. On a storage error the pass stops where it is; the next pass
        resumes with the same batch and key.
        """
        result: dict[str, Any] = {"records": 0, "feedback": 0, "images": 0, "objects": 0, "error": None}
        try:
            for kind in ("records", "feedback"):
                for _ in range(self.max_batches):
                    b = self._next_batch(kind)
                    if b is None:
                        break
                    data, rows = self._batch_bytes(b)
                    storage.write_bytes(self._remote(b.object_key), data)
                    self._confirm(b)
                    result[kind] += rows
                    result["objects"] += 1
                    self.uploaded_objects += 1
            n = self._upload_images(self.batch * self.max_batches)
            result["images"] += n
            result["objects"] += n
        except storage.StorageError as exc:
            result["error"] = self.last_error = str(exc)
        else:
            self.last_error = None
        result["backlog"] = self.backlog
        self.last_result = result
        return result

    def _remote(self, key: str) -> str:
        return storage.join(self.url, *key.split("/"))

    def _cursor(self, con: sqlite3.Connection, kind: str) -> int:
        row = con.execute("SELECT last_id FROM sync_cursor WHERE kind=?", (kind,)).fetchone()
        return int(row[0]) if row else 0

    def _next_batch(self, kind: str) -> _Batch | None:
        """The batch to upload next: an unconfirmed one (same rows, same key) or a new one, fixed now."""
        table = _ROWS[kind][0]
        with self.store.read() as con:
            row = con.execute("SELECT first_id, last_id, object_key FROM sync_batches WHERE kind=? AND"
                              " status='pending' ORDER BY first_id LIMIT 1", (kind,)).fetchone()
            if row is not None:
                return _Batch(kind, int(row[0]), int(row[1]), str(row[2]))
            cursor = self._cursor(con, kind)
            rows = con.execute(f"SELECT id, station FROM {table} WHERE id > ? ORDER BY id LIMIT ?",
                               (cursor, self.batch)).fetchall()
        if not rows:
            return None
        station = rows[0][1]
        last = rows[0][0]
        for rid, st in rows:  # one station per object (a store that changed its station name)
            if st != station:
                break
            last = rid
        b = _Batch(kind, int(rows[0][0]), int(last), f"{station}/{kind}/{int(rows[0][0]):012d}-{int(last):012d}.jsonl")
        with self.store.transaction() as db:
            db.execute("INSERT INTO sync_batches (kind, first_id, last_id, object_key, status, created_at)"
                       " VALUES (?,?,?,?,'pending',?) ON CONFLICT DO NOTHING",
                       (b.kind, b.first_id, b.last_id, b.object_key, self.store.clock()))
        return b

    def _batch_bytes(self, b: _Batch) -> tuple[bytes, int]:
        """The object's content: the batch's rows as JSON lines (deterministic: sorted keys, id order)."""
        sql = _ROWS[b.kind][1]
        with self.store.read() as con:
            cur = con.execute(sql, (b.first_id, b.last_id))
            names = [c[0] for c in cur.description]
            lines = []
            for row in cur.fetchall():
                d = dict(zip(names, row, strict=True))
                if "stats" in d:
                    d["stats"] = json.loads(d["stats"])
                if "image" in d:
                    d["image"] = bool(d["image"])
                lines.append(json.dumps(d, sort_keys=True, separators=(",", ":")))
        return ("".join(line + "\n" for line in lines)).encode("utf-8"), len(lines)

    def _confirm(self, b: _Batch) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE sync_batches SET status='done', done_at=? WHERE kind=? AND first_id=?",
                       (self.store.clock(), b.kind, b.first_id))
            db.execute("UPDATE sync_cursor SET last_id=MAX(last_id, ?) WHERE kind=?", (b.last_id, b.kind))

    def _upload_images(self, budget: int) -> int:
        """Upload sampled images in prediction-id order, moving the cursor after each confirmed PUT."""
        done = 0
        while done < budget:
            with self.store.read() as con:
                con.execute("BEGIN")  # one snapshot: the images and the newest id seen together
                cursor = self._cursor(con, "images")
                rows = con.execute(
                    "SELECT i.prediction_id, p.station FROM images i JOIN predictions p ON p.id = i.prediction_id"
                    " WHERE i.prediction_id > ? ORDER BY i.prediction_id LIMIT ?",
                    (cursor, min(self.batch, budget - done))).fetchall()
                newest = con.execute("SELECT COALESCE(MAX(id), 0) FROM predictions").fetchone()[0]
                con.execute("COMMIT")
            if not rows:
                # No image past the cursor up to `newest`: move it there, so retention need not hold
                # image-less records (an image always commits with its row, so none can appear below).
                if newest > cursor:
                    with self.store.transaction() as db:
                        db.execute("UPDATE sync_cursor SET last_id=MAX(last_id, ?) WHERE kind='images'", (newest,))
                return done
            for pid, station in rows:
                data = self.store.image(int(pid))
                if data is not None:  # None: removed by retention meanwhile, nothing to upload
                    storage.write_bytes(self._remote(f"{station}/images/{int(pid)}.png"), data)
                    self.uploaded_objects += 1
                with self.store.transaction() as db:
                    db.execute("UPDATE sync_cursor SET last_id=MAX(last_id, ?) WHERE kind='images'", (int(pid),))
                done += 1
        return done

    # --- state and the background thread ------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Rows and images not yet uploaded (records + feedback + images)."""
        return sum((self.store.sync_backlog() or {}).values())

    def start(self) -> None:
        """Run :meth:`run_once` every ``interval_s`` on a background thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="sync", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread after the pass in flight; what is not uploaded stays in the store."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                result = self.run_once()
                busy = result["objects"] > 0 and result["error"] is None and result["backlog"] > 0
            except Exception as exc:  # the store is closing, or a bug: keep the thread, say why
                self.last_error = f"{type(exc).__name__}: {exc}"
                busy = False
            if not busy:
                self._stop.wait(self.interval_s)
