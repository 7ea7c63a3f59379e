"""Schema version 2 of the local store: the ``shadow`` table, its migration from version 1, its reads."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lineguard.edge.store import SCHEMA_VERSION, SHADOW_REASON, ShadowResult, Store, StoreError
from tests.unit._records import T0, make_record, png

V1_FIXTURE = Path(__file__).parent / "data" / "edge_store_v1.sql"
SHADOW_COLUMNS = [  # (name, type, notnull, pk) -- other tools read the table by SQL: these must not change
    ("prediction_id", "INTEGER", 0, 1),
    ("bundle_version", "TEXT", 1, 0),
    ("score", "REAL", 1, 0),
    ("decision", "TEXT", 1, 0),
    ("agree", "INTEGER", 1, 0),
    ("time", "REAL", 1, 0),
]


def _columns(path: Path) -> list[tuple[str, str, int, int]]:
    with sqlite3.connect(path) as con:
        return [
            (str(r[1]), str(r[2]), int(r[3]), int(r[5])) for r in con.execute("PRAGMA table_info(shadow)")
        ]


def _dump(path: Path, tables: tuple[str, ...]) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(path) as con:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}


def _v1_store(tmp_path: Path) -> Path:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as con:
        con.executescript(V1_FIXTURE.read_text())
    return path


def test_a_new_store_has_the_shadow_table_with_its_exact_columns(tmp_path: Path) -> None:
    with Store(tmp_path / "new.db") as s:
        assert s.meta()["schema_version"] == str(SCHEMA_VERSION) == "2"
    assert _columns(tmp_path / "new.db") == SHADOW_COLUMNS


def test_a_v1_store_migrates_in_place_and_keeps_every_row(tmp_path: Path) -> None:
    path = _v1_store(tmp_path)
    tables = ("predictions", "images", "feedback", "outbox", "sqlite_sequence")
    before = _dump(path, tables)
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "1"
        assert con.execute("SELECT name FROM sqlite_master WHERE name='shadow'").fetchone() is None
    assert len(before["predictions"]) == 6 and len(before["images"]) == 2 and len(before["outbox"]) == 6

    with Store(path) as s:
        meta = s.meta()
        assert meta["schema_version"] == "2" and meta["migrated_from"] == "1"
        assert s.outbox_backlog("jsonl") == 6  # the pending deliveries survive the migration
        assert s.integrity_check() == "ok"
        # the migrated store works like a new one: a new decision continues the id sequence
        rid = s.record(make_record(7))
        assert rid == 7
        s.record_shadow([(ShadowResult(rid, "2", 0.7, "reject", False, T0), png(7))])
    assert _columns(path) == SHADOW_COLUMNS
    after = _dump(path, tables)
    for table in ("predictions", "images", "feedback", "outbox"):
        assert after[table][: len(before[table])] == before[table], f"{table} rows changed by the migration"
    with Store(path) as s:  # opening again does not migrate again
        assert s.meta()["schema_version"] == "2" and len(s.shadow_rows()) == 1


def test_a_store_from_a_newer_lineguard_is_still_refused(tmp_path: Path) -> None:
    path = _v1_store(tmp_path)
    with sqlite3.connect(path) as con:
        con.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    with pytest.raises(StoreError, match="schema version 3, written by a newer LineGuard"):
        Store(path)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "edge.db")
    yield s
    s.close()


def test_disagreements_keep_their_image_agreements_do_not(store: Store) -> None:
    ids = [store.record(make_record(i, score=0.1 + 0.01 * i)) for i in range(1, 5)]
    results = [
        (ShadowResult(ids[0], "2", 0.2, "accept", True, T0), png(1)),  # agrees: the image is not kept
        (ShadowResult(ids[1], "2", 0.8, "reject", False, T0), png(2)),  # disagrees: kept for labelling
        (ShadowResult(ids[2], "2", 0.9, "reject", False, T0), None),  # disagrees, no image offered
    ]
    assert store.record_shadow(results) == {"written": 3, "images": 1, "skipped": 0}
    assert store.image(ids[1]) == png(2) and store.image(ids[0]) is None
    assert store.counts()["images"] == {SHADOW_REASON: 1}
    assert store.counts()["shadow"] == {"compared": 3, "disagreements": 2}
    # idempotent on the prediction id: writing the same comparisons again writes nothing
    assert store.record_shadow(results)["written"] == 0

    rows = store.shadow_rows()
    assert [r["prediction_id"] for r in rows] == ids[:3]
    first = rows[1]
    assert first["agree"] is False and first["decision"] == "reject" and first["bundle_version"] == "2"
    assert first["champion_decision"] == "accept" and first["champion_version"] == "1.0.0"
    assert first["recipe"] == "vanilla" and first["image"] is True
    assert [r["prediction_id"] for r in store.shadow_rows(disagreements_only=True)] == ids[1:3]
    assert [r["prediction_id"] for r in store.shadow_rows(since_id=ids[1])] == [ids[2]]
    assert len(store.shadow_rows(limit=1)) == 1
    with pytest.raises(StoreError, match="limit"):
        store.shadow_rows(limit=0)


def test_a_frame_that_already_has_an_image_keeps_its_own(store: Store) -> None:
    rid = store.record(make_record(1, decision="reject", score=0.9), png(1))
    assert not store.wants_shadow_image(rid)
    store.record_shadow([(ShadowResult(rid, "2", 0.1, "accept", False, T0), png(99))])
    assert store.image(rid) == png(1)
    assert store.counts()["images"] == {"reject": 1}


def test_results_for_removed_predictions_are_skipped_and_bad_ones_refused(store: Store) -> None:
    assert store.record_shadow([(ShadowResult(12345, "2", 0.5, "reject", False, T0), None)]) == {
        "written": 0,
        "images": 0,
        "skipped": 1,
    }
    with pytest.raises(StoreError, match="decision 'maybe'"):
        ShadowResult(1, "2", 0.5, "maybe", False, T0)
    with pytest.raises(StoreError, match="score must be a finite number"):
        ShadowResult(1, "2", float("nan"), "accept", True, T0)
    with pytest.raises(StoreError, match="prediction id"):
        ShadowResult(0, "2", 0.5, "accept", True, T0)
    rid = store.record(make_record(1))
    with pytest.raises(StoreError, match="not a PNG"):
        store.record_shadow([(ShadowResult(rid, "2", 0.9, "reject", False, T0), b"GIF89a....")])


def test_the_disk_policy_stops_disagreement_images_before_rejects(tmp_path: Path) -> None:
    free = {"bytes": 10**12}
    s = Store(tmp_path / "edge.db", min_free_bytes=1000, disk_free=lambda _: free["bytes"])
    try:
        rid = s.record(make_record(1))
        free["bytes"] = 400  # under half the floor: rejects only
        assert not s.wants_shadow_image(rid)
        s.record_shadow([(ShadowResult(rid, "2", 0.9, "reject", False, T0), png(1))])
        assert s.image(rid) is None and s.counts()["images_skipped_disk"] == 1
        assert len(s.shadow_rows()) == 1  # the comparison itself is always written
    finally:
        s.close()


def test_retention_removes_a_prediction_with_its_shadow_row(tmp_path: Path) -> None:
    now = {"t": T0}
    s = Store(tmp_path / "edge.db", retention_days=1, clock=lambda: now["t"])
    try:
        old = s.record(make_record(1, time=T0))
        new = s.record(make_record(2, time=T0 + 2 * 86400))
        s.record_shadow(
            [
                (ShadowResult(old, "2", 0.9, "reject", False, T0), png(1)),
                (ShadowResult(new, "2", 0.1, "accept", True, T0), None),
            ]
        )
        now["t"] = T0 + 2 * 86400 + 10
        s.enforce_retention()
        assert [r["prediction_id"] for r in s.shadow_rows()] == [new]
        assert s.image(old) is None
    finally:
        s.close()
