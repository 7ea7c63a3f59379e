"""R1: kill -9 during writes, 100 times -- no acknowledged record lost or doubled, integrity after each kill.

A child process records decisions in a loop (one transaction each, or a few at once
through ``record_many``) while an outbox worker in the same process acknowledges
deliveries -- two writers racing, as in the runtime. After each ``store.record`` returns
the child appends the key to a side file: that is its acknowledgement. The parent
SIGKILLs it after a short random delay, then checks the database: ``integrity_check``
is "ok", every acknowledged key is there, nothing is there twice, and every row came
with its outbox row and (for rejects) its image -- the transaction is whole or absent.
The next child replays the last keys of the previous one (a restarted runtime seeing
the same frames again): idempotency keeps them single.

The acknowledgement file is not fsync'd: a SIGKILL ends the process, not the kernel,
so what the child wrote to it is in the page cache and readable, exactly like the WAL
frames of ``synchronous=NORMAL``. (Power loss is a different guarantee: see
docs/runtime.md.) Children are forked from a forkserver that has the store imported,
so 100 restarts take seconds.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from lineguard.edge.store import Store
from tests.integration._forkserver import forkserver

pytestmark = pytest.mark.slow

KILLS = 100


def _writer(db: str, acks: str, run: int, replay: list[str]) -> None:
    """The child: record forever, appending each acknowledged key to ``acks`` after the call returned."""
    from lineguard.edge.outbox import OutboxMessage, OutboxWorker
    from tests.unit._records import make_record, png

    class Discard:
        name = "mqtt"

        def send(self, message: OutboxMessage) -> None:
            pass

        def close(self) -> None:
            pass

    store = Store(db)
    worker = OutboxWorker(store, Discard(), backoff_s=(0.01, 0.1), poll_s=0.01)
    worker.start()
    fd = os.open(acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    image = png(run, size=24)

    def ack(keys: list[str]) -> None:
        os.write(fd, "".join(k + "\n" for k in keys).encode())

    for key in replay:  # the same frames again after a restart
        run_id, seq = key.split(":", 1)[1].split("-")
        store.record(make_record(int(seq), run=run_id), sinks=("mqtt",))
        ack([key])
    seq = 0
    rng = random.Random(run)
    while True:
        if rng.random() < 0.3:
            recs = [make_record(seq + j, run=f"k{run}") for j in range(4)]
            store.record_many([(r, None) for r in recs], sinks=("mqtt",))
            ack([r.key for r in recs])
            seq += 4
            continue
        reject = seq % 5 == 0
        rec = make_record(seq, run=f"k{run}", decision="reject" if reject else "accept",
                          score=0.9 if reject else 0.05)
        store.record(rec, image if reject else None, sinks=("mqtt",), sent=("modbus",) if reject else ())
        ack([rec.key])
        seq += 1


def _acked(path: Path) -> list[str]:
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    return [line for line in lines[:-1] if line]  # a last line without "\n" was never acknowledged


def test_kill_9_during_writes_100_times(tmp_path: Path) -> None:
    ctx = forkserver()
    db = str(tmp_path / "store.db")
    Store(db).close()
    rng = random.Random(12)
    all_acked: set[str] = set()
    replay: list[str] = []
    open_s: list[float] = []
    for run in range(KILLS):
        acks = tmp_path / f"acks-{run}.txt"
        child = ctx.Process(target=_writer, args=(db, str(acks), run, replay), daemon=True)
        child.start()
        deadline = time.monotonic() + 30.0
        while not _acked(acks) and child.is_alive() and time.monotonic() < deadline:
            time.sleep(0.002)
        assert child.is_alive(), f"run {run}: the writer died on its own (exit code {child.exitcode})"
        time.sleep(rng.uniform(0.0, 0.06))  # kill at a random point of the write loop
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(10.0)
        assert child.exitcode == -signal.SIGKILL

        acked = _acked(acks)
        assert acked, f"run {run}: nothing acknowledged before the kill"
        t0 = time.perf_counter()
        store = Store(db)  # the restart: WAL recovery happens here
        open_s.append(time.perf_counter() - t0)
        try:
            assert store.integrity_check() == "ok", f"run {run}: the database is damaged after kill -9"
            with store.read() as con:
                keys = [r[0] for r in con.execute("SELECT key FROM predictions")]
                # every row came with its outbox row: the transaction was never cut in half
                orphans = con.execute(
                    "SELECT COUNT(*) FROM predictions p WHERE (SELECT COUNT(*) FROM outbox o"
                    " WHERE o.key = p.key AND o.sink = 'mqtt') != 1").fetchone()[0]
                no_image = con.execute(
                    "SELECT COUNT(*) FROM predictions p WHERE decision = 'reject' AND NOT EXISTS"
                    " (SELECT 1 FROM images i WHERE i.prediction_id = p.id)").fetchone()[0]
                pending = con.execute("SELECT COUNT(*) FROM outbox WHERE sink='mqtt' AND status='pending'").fetchone()[0]
            assert len(keys) == len(set(keys)), f"run {run}: a record is in the store twice"
            missing = set(acked) - set(keys)
            assert not missing, f"run {run}: {len(missing)} acknowledged records lost, e.g. {sorted(missing)[:3]}"
            assert orphans == 0 and no_image == 0, f"run {run}: half-written records ({orphans}, {no_image})"
            assert store.outbox_backlog("mqtt") == pending
        finally:
            store.close()
        all_acked |= set(acked)
        replay = acked[-5:]
    with Store(db) as store:
        total = store.counts()["predictions"]
        assert total >= len(all_acked)  # unacknowledged writes that committed are fine; lost acked ones are not
    print(f"\nR1: {KILLS} kills, {len(all_acked)} acknowledged records, {total} in the store; "
          f"reopen after kill: median {sorted(open_s)[len(open_s) // 2] * 1000:.1f} ms, max {max(open_s) * 1000:.1f} ms")
