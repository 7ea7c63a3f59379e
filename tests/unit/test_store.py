"""The local store: one transaction per record, idempotent keys, the sampling and disk policy, retention."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from lineguard.edge.store import SCHEMA_VERSION, PredictionRecord, SamplePolicy, Store, StoreError
from tests.unit._records import T0, make_record, png

GB = 10**9


class Disk:
    """An injectable free-space gauge: tests set ``free`` to simulate a filling disk."""

    def __init__(self, free: int = 100 * GB) -> None:
        self.free = free
        self.calls = 0

    def __call__(self, path: str) -> int:
        self.calls += 1
        return self.free


class Clock:
    def __init__(self, now: float = T0 + 10_000) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "edge" / "store.db", disk_free=Disk())
    yield s
    s.close()


def _count(s: Store, sql: str, *args: object) -> int:
    with s.read() as con:
        return int(con.execute(sql, args).fetchone()[0])


def test_record_round_trip_and_key(store: Store) -> None:
    rec = make_record(1, decision="reject", score=0.9)
    assert rec.key == "line1:r0-1"
    d = rec.to_dict()
    assert d["key"] == rec.key and json.loads(json.dumps(d)) == d
    rid = store.record(rec, png(1), sinks=("mqtt", "webhook"), sent=("modbus",))
    got = store.prediction(rid)
    assert got is not None
    assert {k: got[k] for k in d} == d
    assert got["id"] == rid and got["image"] is True
    assert store.image(rid) == png(1)
    with store.read() as con:
        rows = con.execute("SELECT sink, key, status, payload FROM outbox ORDER BY sink").fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [("modbus", rec.key, "sent"), ("mqtt", rec.key, "pending"),
                                                 ("webhook", rec.key, "pending")]
    assert all(json.loads(r[3]) == d for r in rows)
    assert store.outbox_backlog("mqtt") == 1 and store.outbox_backlog("modbus") == 0
    assert store.prediction(rid + 100) is None and store.image(rid + 100) is None


def test_record_is_idempotent_on_the_key(store: Store) -> None:
    rec = make_record(7, decision="reject", score=0.8)
    first = store.record(rec, png(), sinks=("mqtt",))
    again = store.record(rec, png(2), sinks=("mqtt", "webhook"), sent=("modbus",))
    assert again == first
    assert _count(store, "SELECT COUNT(*) FROM predictions") == 1
    assert _count(store, "SELECT COUNT(*) FROM outbox") == 1
    assert store.image(first) == png()  # the second image was not written either
    assert store.outbox_backlog("mqtt") == 1
    ids = store.record_many([(make_record(8), None), (rec, None), (make_record(8), None)], sinks=("mqtt",))
    assert ids[1] == first and ids[0] == ids[2] != first
    assert _count(store, "SELECT COUNT(*) FROM outbox WHERE sink='mqtt'") == 2


def test_one_transaction_nothing_half_written(store: Store) -> None:
    """A failure inside the transaction (here: an outbox insert refused by a trigger) leaves no trace."""
    with store.transaction() as db:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON outbox WHEN NEW.sink = 'boom' "
                   "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
    with pytest.raises(StoreError, match="refused by the test"):
        store.record(make_record(1, decision="reject", score=0.9), png(), sinks=("ok", "boom"))
    assert _count(store, "SELECT COUNT(*) FROM predictions") == 0
    assert _count(store, "SELECT COUNT(*) FROM images") == 0
    assert _count(store, "SELECT COUNT(*) FROM outbox") == 0
    assert store.outbox_backlog("ok") == 0
    assert store.health()["status"] == "degraded" and "write_failed" in store.health()["reasons"][0]
    store.record(make_record(2), sinks=("ok",))  # the next good write clears it
    assert store.health()["status"] == "ok"
    with pytest.raises(StoreError, match="not a PNG"):  # record_many: all or nothing, checked first
        store.record_many([(make_record(3), png()), (make_record(4), b"GIF89a...")])
    assert store.prediction(2) is None and _count(store, "SELECT COUNT(*) FROM predictions") == 1


def test_queries_filter_and_page(store: Store) -> None:
    for i in range(10):
        store.record(make_record(i, decision="reject" if i % 3 == 0 else "accept", score=0.9 if i % 3 == 0 else 0.1,
                                 recipe="mint" if i % 2 else "vanilla"))
    assert [p["frame_id"] for p in store.predictions(decision="reject")] == ["r0-0", "r0-3", "r0-6", "r0-9"]
    assert [p["id"] for p in store.predictions(recipe="mint", limit=2)] == [2, 4]
    assert [p["id"] for p in store.predictions(recipe="mint", after_id=4)] == [6, 8, 10]
    assert [p["id"] for p in store.predictions(since=T0 + 3, until=T0 + 6)] == [4, 5, 6]
    assert [p["id"] for p in store.predictions(limit=3, newest_first=True)] == [10, 9, 8]
    with pytest.raises(StoreError, match="limit"):
        store.predictions(limit=0)
    with pytest.raises(StoreError, match="decision filter 'maybe'"):
        store.predictions(decision="maybe")


def test_feedback(store: Store) -> None:
    rid = store.record(make_record(1))
    fid = store.add_feedback(rid, "bad", note="topping missing after all")
    rows = store.feedback()
    assert [(r["id"], r["prediction_id"], r["prediction_key"], r["label"], r["source"]) for r in rows] == [
        (fid, rid, "line1:r0-1", "bad", "operator")]
    assert store.feedback(prediction_id=rid + 1) == []
    with pytest.raises(StoreError, match="no prediction with id 99"):
        store.add_feedback(99, "bad")
    with pytest.raises(StoreError, match="label"):
        store.add_feedback(rid, "  ")
    assert store.counts()["feedback"] == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"station": "line/1"}, "not a plain name"),
        ({"station": "a:b"}, "not a plain name"),
        ({"decision": "maybe"}, "decision 'maybe' is not one of accept, reject"),
        ({"score": float("nan")}, "score must be a finite number"),
        ({"frame_id": ""}, "frame_id must be 1-200 characters"),
    ],
)
def test_bad_records_are_refused(change: dict[str, object], message: str) -> None:
    fields = {f: getattr(make_record(1), f) for f in PredictionRecord.__dataclass_fields__}
    with pytest.raises(StoreError, match=message):
        PredictionRecord(**{**fields, **change})  # type: ignore[arg-type]


def test_bad_settings_and_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="synchronous 'OFF' is not supported; expected NORMAL or FULL"):
        Store(tmp_path / "a.db", synchronous="OFF")
    with pytest.raises(StoreError, match="max_bytes"):
        Store(tmp_path / "a.db", max_bytes=10)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(StoreError, match=r"garbage\.db' is not a"):
        Store(garbage)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(StoreError, match="not a LineGuard store"):
        Store(other)


def test_schema_version_is_kept_and_a_newer_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path, synchronous="full") as s:
        assert s.meta()["schema_version"] == str(SCHEMA_VERSION)
        s.record(make_record(1), sinks=("mqtt",))
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    with Store(path) as s:  # reopened: data and the pending count come back
        assert s.outbox_backlog("mqtt") == 1 and s.counts()["predictions"] == 1
    with sqlite3.connect(path) as con:
        con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(StoreError, match="schema version 99, written by a newer LineGuard"):
        Store(path)


def test_sample_policy_is_pure_and_deterministic() -> None:
    policy = SamplePolicy(low_confidence_band=0.1, pass_share=0.05, seed=3)
    assert policy.wants(make_record(1, decision="reject", score=0.99))
    assert not SamplePolicy(rejects=False, low_confidence_band=0.0, pass_share=0.0).wants(
        make_record(1, decision="reject", score=0.99))
    assert policy.wants(make_record(1, score=0.45)) and policy.reason(make_record(1, score=0.45)) == "low_confidence"
    passes = [make_record(i, score=0.01) for i in range(20_000)]
    chosen = [r.key for r in passes if policy.wants(r)]
    assert 0.04 < len(chosen) / len(passes) < 0.06
    assert chosen == [r.key for r in passes if SamplePolicy(low_confidence_band=0.1, pass_share=0.05, seed=3).wants(r)]
    other_seed = {r.key for r in passes if SamplePolicy(low_confidence_band=0.1, pass_share=0.05, seed=4).wants(r)}
    assert other_seed != set(chosen)
    assert not any(SamplePolicy(pass_share=0.0).wants(r) for r in passes[:500])
    with pytest.raises(StoreError, match="pass_share"):
        SamplePolicy(pass_share=1.5)


def test_disk_policy_degrades_sampling_in_order_and_recovers(tmp_path: Path) -> None:
    """Passes stop first, then low-confidence frames, then rejects; rows always go on; it heals itself."""
    disk = Disk()
    floor = 1_000_000_000
    s = Store(tmp_path / "s.db", disk_free=disk, min_free_bytes=floor, sample=SamplePolicy(pass_share=1.0))
    kinds = {"pass": dict(score=0.01), "low": dict(score=0.45), "reject": dict(decision="reject", score=0.95)}

    def write_all(tag: str) -> dict[str, bool]:
        kept = {}
        for name, kw in kinds.items():
            rec = make_record(0, run=f"{tag}-{name}", **kw)  # type: ignore[arg-type]
            wanted = s.wants_image(rec)
            rid = s.record(rec, png(), sinks=("mqtt",))
            kept[name] = s.image(rid) is not None
            assert wanted == kept[name]
        return kept

    assert write_all("a") == {"pass": True, "low": True, "reject": True}
    assert s.health()["status"] == "ok" and s.health()["sampling"] == "full"
    disk.free = floor - 1
    assert write_all("b") == {"pass": False, "low": True, "reject": True}
    health = s.health()
    assert health["status"] == "degraded" and health["sampling"] == "no_passes"
    assert health["reasons"][0].startswith("disk_low:")
    disk.free = floor // 2 - 1
    assert write_all("c") == {"pass": False, "low": False, "reject": True}
    assert s.health()["sampling"] == "rejects_only"
    disk.free = floor // 4 - 1
    assert write_all("d") == {"pass": False, "low": False, "reject": False}
    assert s.health()["sampling"] == "none"
    assert s.counts()["predictions"] == 12  # every row went in
    assert s.counts()["images_skipped_disk"] == 1 + 2 + 3
    disk.free = 100 * GB  # space is back: nothing to restart
    assert write_all("e") == {"pass": True, "low": True, "reject": True}
    assert s.health() == {**s.health(), "status": "ok", "reasons": [], "sampling": "full"}
    s.close()


def test_a_real_disk_full_error_keeps_the_row_and_drops_the_image(tmp_path: Path) -> None:
    """SQLite's own "database or disk is full" (max_page_count) on the image: the row is written without it."""
    s = Store(tmp_path / "s.db", disk_free=Disk())
    s.record(make_record(0))
    with s._lock:
        pages = int(s._db.execute("PRAGMA page_count").fetchone()[0])
        s._db.execute(f"PRAGMA max_page_count = {pages + 8}")
    big = png(5, size=256)  # ~200 kB, far more than 8 pages
    rid = s.record(make_record(1, decision="reject", score=0.9), big, sinks=("mqtt",))
    assert s.prediction(rid) is not None and s.image(rid) is None
    assert s.outbox_backlog("mqtt") == 1
    health = s.health()
    assert health["status"] == "degraded" and any(r.startswith("disk_full") for r in health["reasons"])
    assert s.counts()["images_failed_full"] == 1
    with s._lock:
        s._db.execute("PRAGMA max_page_count = 1073741823")
    rid2 = s.record(make_record(2, decision="reject", score=0.9), big)
    assert s.image(rid2) == big and s.health()["status"] == "ok"
    s.close()


def test_retention_by_age_holds_what_is_not_uploaded(tmp_path: Path) -> None:
    clock = Clock(T0 + 40 * 86400)
    s = Store(tmp_path / "s.db", retention_days=30, disk_free=Disk(), clock=clock)
    old = [s.record(make_record(i, decision="reject", score=0.9), png(i), sinks=("mqtt",)) for i in range(5)]
    new = s.record(make_record(99, time=clock.now - 3600), png(99))
    s.outbox_ack(s.outbox_pending("mqtt")[0].id)
    with s.transaction() as db:  # a Sync was set up and uploaded the first three records and images
        db.executemany("INSERT INTO sync_cursor VALUES (?, ?)", [("records", 3), ("images", 3), ("feedback", 0)])
    assert s.sync_backlog() == {"records": 3, "feedback": 0, "images": 3}
    out = s.enforce_retention()
    assert out["predictions"] == 3 and out["images"] == 3 and out["unsynced"] == 0
    assert [p["id"] for p in s.predictions()] == [old[3], old[4], new]
    # the delivered outbox row is old only if created long ago: rows were created "now", so they stay
    assert s.counts()["outbox"]["mqtt"] == {"pending": 4, "sent": 1, "dead": 0}
    assert s.counts()["retention_predictions"] == 3
    s.close()


def test_retention_by_size_removes_oldest_images_first(tmp_path: Path) -> None:
    s = Store(tmp_path / "s.db", max_bytes=1_000_000, disk_free=Disk(), clock=Clock())
    ids = [s.record(make_record(i, decision="reject", score=0.9), png(i, size=128)) for i in range(40)]
    assert s._used_bytes() > 1_000_000 and s.health()["sampling"] == "no_passes"
    out = s.enforce_retention()
    assert s._used_bytes() <= 1_000_000
    assert out["images"] > 0 and out["predictions"] == 0  # dropping images sufficed; every row stays
    kept = [i for i in ids if s.image(i) is not None]
    assert kept == ids[len(ids) - len(kept):]  # the newest images are the ones kept
    assert s.counts()["predictions"] == 40 and s.counts()["retention_images"] == out["images"]
    s.close()
    assert Path(tmp_path / "s.db").stat().st_size < 1_500_000  # incremental vacuum gave the space back


def test_outbox_bound_marks_the_oldest_dead_and_counts_them(tmp_path: Path) -> None:
    s = Store(tmp_path / "s.db", max_pending=5, disk_free=Disk())
    for i in range(8):
        s.record(make_record(i), sinks=("mqtt", "webhook"))
    assert s.outbox_backlog("mqtt") == 5 and s.outbox_backlog() == 10
    with s.read() as con:
        dead = con.execute("SELECT key, last_error FROM outbox WHERE sink='mqtt' AND status='dead' ORDER BY id").fetchall()
    assert dead == [(f"line1:r0-{i}", "outbox_full") for i in range(3)]
    assert [m.key for m in s.outbox_pending("mqtt")] == [f"line1:r0-{i}" for i in range(3, 8)]
    assert s.counts()["outbox_full_dead"] == 6
    s.close()


def test_integrity_check_finds_damage(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path, disk_free=Disk()) as s:
        for i in range(300):
            s.record(make_record(i), sinks=("mqtt",))
        assert s.integrity_check() == "ok"
        with s._lock:
            s._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(8 * page, len(data) - page, 3 * page):  # scribble over the b-tree pages, keep page 1
        data[offset + 100: offset + 400] = b"\xff" * 300
    path.write_bytes(bytes(data))
    try:
        s = Store(path, disk_free=Disk())
    except StoreError:
        return  # refusing to open a damaged store is also a correct answer
    assert s.integrity_check() != "ok"
    s.close()


def test_threads_write_and_read_concurrently(store: Store) -> None:
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(150):
                store.record(make_record(i, run=f"t{t}"), sinks=("mqtt",))
                if i % 25 == 0:
                    store.predictions(limit=10, newest_first=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.counts()["predictions"] == 600
    assert store.outbox_backlog("mqtt") == 600 == _count(store, "SELECT COUNT(*) FROM outbox WHERE status='pending'")


def test_closed_store_says_so(tmp_path: Path) -> None:
    s = Store(tmp_path / "s.db")
    s.close()
    s.close()
    with pytest.raises(StoreError, match="is closed"):
        s.record(make_record(1))
