"""Sync to a local folder: fixed batches with deterministic keys, a cursor moved after the upload, nothing twice."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from lineguard import LineguardError, storage
from lineguard.edge.store import Store
from lineguard.edge.sync import Sync
from tests.unit._records import T0, make_record, png


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "edge" / "store.db", clock=Clock(T0 + 3600))
    yield s
    s.close()


def remote_lines(root: Path, kind: str = "records") -> list[dict[str, object]]:
    out = []
    for f in sorted(root.glob(f"*/{kind}/*.jsonl")):
        out += [json.loads(line) for line in f.read_text().splitlines()]
    return out


def test_uploads_records_feedback_and_images(store: Store, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    ids = [store.record(make_record(i, decision="reject" if i % 4 == 0 else "accept",
                                    score=0.9 if i % 4 == 0 else 0.01), png(i) if i % 4 == 0 else None)
           for i in range(10)]
    fid = store.add_feedback(ids[1], "bad", note="missed")
    sync = Sync(store, str(remote), batch=4)
    assert sync.backlog == 10 + 1 + 3
    result = sync.run_once()
    assert result == {"records": 10, "feedback": 1, "images": 3, "objects": 3 + 1 + 3, "error": None, "backlog": 0}
    assert sorted(p.name for p in (remote / "line1" / "records").iterdir()) == [
        "000000000001-000000000004.jsonl", "000000000005-000000000008.jsonl", "000000000009-000000000010.jsonl"]
    lines = remote_lines(remote)
    assert [line["id"] for line in lines] == ids
    assert lines[0] == {**store.prediction(ids[0]), "image": True}  # type: ignore[dict-item]
    assert sorted(p.name for p in (remote / "line1" / "images").iterdir()) == ["1.png", "5.png", "9.png"]
    assert (remote / "line1" / "images" / "5.png").read_bytes() == png(4)
    fb = remote_lines(remote, "feedback")
    assert [(f["id"], f["prediction_key"], f["label"]) for f in fb] == [(fid, "line1:r0-1", "bad")]
    assert sync.run_once()["objects"] == 0  # nothing new, nothing written
    store.record(make_record(10))
    assert sync.run_once()["records"] == 1
    assert (remote / "line1" / "records" / "000000000011-000000000011.jsonl").exists()
    assert store.sync_cursors() == {"records": 11, "feedback": 1, "images": 11}


def test_a_failed_upload_is_retried_with_the_same_key_and_rows(store: Store, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch is fixed before its upload: rows recorded during the outage go into the NEXT object."""
    remote = tmp_path / "remote"
    for i in range(5):
        store.record(make_record(i))
    sync = Sync(store, str(remote), batch=100)
    real_write = storage.write_bytes

    def cut(url: str, data: bytes) -> None:
        raise storage.StorageError(f"cannot write '{url}': network is unreachable")

    monkeypatch.setattr(storage, "write_bytes", cut)
    result = sync.run_once()
    assert result["error"] is not None and "network is unreachable" in result["error"]
    assert result["records"] == 0 and sync.last_error == result["error"]
    for i in range(5, 8):
        store.record(make_record(i))
    monkeypatch.setattr(storage, "write_bytes", real_write)
    assert sync.run_once()["records"] == 8
    assert sorted(p.name for p in (remote / "line1" / "records").iterdir()) == [
        "000000000001-000000000005.jsonl", "000000000006-000000000008.jsonl"]
    keys = Counter(str(line["key"]) for line in remote_lines(remote))
    assert len(keys) == 8 and set(keys.values()) == {1}


def test_a_crash_after_the_upload_rewrites_the_same_object(store: Store, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Uploaded but not confirmed (killed in between): the next run writes the same key again, not a new one."""
    remote = tmp_path / "remote"
    for i in range(3):
        store.record(make_record(i))
    sync = Sync(store, str(remote))

    def crash(b: object) -> None:
        raise KeyboardInterrupt("killed between the upload and the confirmation")

    monkeypatch.setattr(sync, "_confirm", crash)
    with pytest.raises(KeyboardInterrupt):
        sync.run_once()
    monkeypatch.undo()
    store.record(make_record(3))
    sync2 = Sync(store, str(remote))
    assert sync2.run_once()["records"] == 4
    names = sorted(p.name for p in (remote / "line1" / "records").iterdir())
    assert names == ["000000000001-000000000003.jsonl", "000000000004-000000000004.jsonl"]
    assert Counter(str(line["key"]) for line in remote_lines(remote)) == {f"line1:r0-{i}": 1 for i in range(4)}


def test_one_station_per_object(store: Store, tmp_path: Path) -> None:
    for i in range(3):
        store.record(make_record(i, station="line1"))
    for i in range(2):
        store.record(make_record(i, station="line2"))
    assert Sync(store, str(tmp_path / "r")).run_once()["objects"] == 2
    assert (tmp_path / "r" / "line1" / "records" / "000000000001-000000000003.jsonl").exists()
    assert (tmp_path / "r" / "line2" / "records" / "000000000004-000000000005.jsonl").exists()


def test_retention_holds_records_until_they_are_uploaded(store: Store, tmp_path: Path) -> None:
    clock = store.clock
    assert isinstance(clock, Clock)
    for i in range(4):
        store.record(make_record(i, decision="reject", score=0.9), png(i))
    sync = Sync(store, str(tmp_path / "r"))
    clock.now = T0 + 60 * 86400  # two months later, still offline
    assert store.enforce_retention()["predictions"] == 0  # held: not uploaded yet
    assert sync.run_once()["records"] == 4
    out = store.enforce_retention()  # uploaded: now they may go
    assert out["predictions"] == 4 and out["images"] == 4 and out["unsynced"] == 0
    assert store.counts()["predictions"] == 0 and store.counts()["retention_unsynced"] == 0


def test_the_background_thread_uploads(store: Store, tmp_path: Path) -> None:
    store.record(make_record(0))
    sync = Sync(store, str(tmp_path / "r"), interval_s=0.05)
    sync.start()
    deadline = time.monotonic() + 10.0
    while sync.backlog and time.monotonic() < deadline:
        time.sleep(0.01)
    sync.stop()
    assert sync.backlog == 0
    assert len(remote_lines(tmp_path / "r")) == 1


def test_bad_settings_are_refused(store: Store) -> None:
    with pytest.raises(LineguardError, match="sync url is empty"):
        Sync(store, " ")
    with pytest.raises(LineguardError, match="batch"):
        Sync(store, "/tmp/x", batch=0)
