"""The outbox: strictly ordered per sink, at-least-once with the key, retries with backoff, a stated bound."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lineguard import LineguardError
from lineguard.edge.outbox import OutboxMessage, OutboxWorker, Sink, SinkError, SinkRejected
from lineguard.edge.store import Store
from tests.unit._records import make_record

FAST = {"backoff_s": (0.005, 0.04), "poll_s": 0.05, "seed": 0}


class ListSink:
    """A sink that appends what it receives; ``down`` makes it fail, ``reject`` refuses some keys for good."""

    def __init__(self, name: str = "list", reject: tuple[str, ...] = ()) -> None:
        self.name = name
        self.down = False
        self.bug = 0  # raise this many plain exceptions (a bug in a sink, not a SinkError)
        self.reject = set(reject)
        self.received: list[OutboxMessage] = []
        self.attempts: list[int] = []
        self.closed = False
        self._lock = threading.Lock()

    def send(self, message: OutboxMessage) -> None:
        with self._lock:
            self.attempts.append(message.id)
            if self.bug > 0:
                self.bug -= 1
                raise RuntimeError("sink bug")
            if self.down:
                raise SinkError("broker unreachable")
            if message.key in self.reject:
                raise SinkRejected("400 bad request")
            self.received.append(message)

    def close(self) -> None:
        self.closed = True

    @property
    def keys(self) -> list[str]:
        return [m.key for m in self.received]


def _wait(predicate: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.005)
    return False


def _collapse(ids: list[int]) -> list[int]:
    """Consecutive repeats (retries of the same message) collapsed to one."""
    return [x for i, x in enumerate(ids) if i == 0 or ids[i - 1] != x]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store.db")
    yield s
    s.close()


def _record(store: Store, n: int, start: int = 0, sinks: tuple[str, ...] = ("list",)) -> list[str]:
    keys = []
    for i in range(start, start + n):
        rec = make_record(i)
        store.record(rec, sinks=sinks)
        keys.append(rec.key)
    return keys


def test_the_list_sink_is_a_sink() -> None:
    assert isinstance(ListSink(), Sink)
    assert issubclass(SinkRejected, SinkError) and issubclass(SinkError, LineguardError)


def test_delivers_everything_in_order_with_keys(store: Store) -> None:
    keys = _record(store, 40)
    sink = ListSink()
    worker = OutboxWorker(store, sink, **FAST)  # type: ignore[arg-type]
    worker.start()
    assert worker.drain(10.0)
    worker.stop()
    assert sink.keys == keys
    assert [m.payload["key"] for m in sink.received] == keys  # the payload carries the key too
    assert worker.delivered == 40 and worker.backlog == 0 and worker.failures == 0
    assert store.counts()["outbox"]["list"] == {"pending": 0, "sent": 40, "dead": 0}
    assert not worker.alive


def test_an_outage_delays_but_loses_nothing_and_keeps_the_order(store: Store) -> None:
    sink = ListSink()
    sink.down = True
    worker = OutboxWorker(store, sink, **FAST)  # type: ignore[arg-type]
    worker.start()
    keys = _record(store, 25)
    worker.wake()
    assert _wait(lambda: worker.failures >= 6)
    keys += _record(store, 25, start=25)  # the line keeps deciding during the outage
    assert sink.received == [] and worker.backlog == 50
    assert worker.last_error is not None and "broker unreachable" in worker.last_error
    sink.down = False
    assert worker.drain(10.0)
    worker.stop()
    assert sink.keys == keys  # every one, once, in order
    # message n+1 was never attempted before n was acknowledged: retries only repeat the head
    with store.read() as con:
        ids = [r[0] for r in con.execute("SELECT id FROM outbox WHERE sink='list' ORDER BY id")]
    assert _collapse(sink.attempts) == ids
    with store.read() as con:
        attempts = con.execute("SELECT attempts FROM outbox WHERE key=?", (keys[0],)).fetchone()[0]
    assert attempts == worker.failures + 1  # the failed tries and the good one, persisted


def test_a_permanent_rejection_is_dead_and_order_continues(store: Store) -> None:
    keys = _record(store, 10)
    sink = ListSink(reject=(keys[3], keys[7]))
    worker = OutboxWorker(store, sink, **FAST)  # type: ignore[arg-type]
    worker.start()
    assert worker.drain(10.0)
    worker.stop()
    assert sink.keys == [k for i, k in enumerate(keys) if i not in (3, 7)]
    assert worker.rejected == 2 and worker.delivered == 8
    with store.read() as con:
        dead = con.execute("SELECT key, last_error FROM outbox WHERE status='dead' ORDER BY id").fetchall()
    assert dead == [(keys[3], "rejected: 400 bad request"), (keys[7], "rejected: 400 bad request")]
    assert _collapse(sink.attempts) == sorted(set(sink.attempts))


def test_the_bound_kills_the_oldest_and_counts_them(tmp_path: Path) -> None:
    """At max_pending, the OLDEST pending rows of that sink are marked dead ('outbox_full'); the rest go out."""
    store = Store(tmp_path / "s.db", max_pending=10)
    sink = ListSink()
    sink.down = True
    worker = OutboxWorker(store, sink, **FAST)  # type: ignore[arg-type]
    worker.start()
    keys = _record(store, 25)
    assert worker.backlog == 10 and store.counts()["outbox_full_dead"] == 15
    sink.down = False
    assert worker.drain(10.0)
    worker.stop()
    # the head may have been in flight when it was marked dead; an ack still wins (it was delivered)
    delivered = sink.keys
    assert delivered[-10:] == keys[-10:] and len(delivered) <= 11
    with store.read() as con:
        rows = con.execute("SELECT key, status, last_error FROM outbox ORDER BY id").fetchall()
    assert all(status == "dead" and err == "outbox_full" for key, status, err in rows if key not in delivered)
    assert store.counts()["outbox"]["list"]["dead"] == 25 - len(delivered)
    store.close()


def test_wake_delivers_at_once_instead_of_at_the_next_poll(store: Store) -> None:
    sink2 = ListSink()
    worker2 = OutboxWorker(store, sink2, backoff_s=(0.01, 0.05), poll_s=60.0)
    _record(store, 2)
    worker2.start()
    assert worker2.drain(5.0)  # drain() wakes it
    assert _wait(lambda: worker2._idle.is_set())  # idle now, its next look a minute away
    _record(store, 1, start=2)
    time.sleep(0.2)
    assert len(sink2.received) == 2  # the new row waits for the poll (a minute away)...
    worker2.wake()
    assert _wait(lambda: len(sink2.received) == 3, 5.0)  # ...until wake()
    worker2.stop()


def test_pending_messages_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    sink = ListSink()
    sink.down = True
    worker = OutboxWorker(store, sink, **FAST)  # type: ignore[arg-type]
    worker.start()
    keys = _record(store, 10)
    assert _wait(lambda: worker.failures >= 2)
    worker.stop()
    store.close()
    store = Store(path)
    assert store.outbox_backlog("list") == 10
    sink2 = ListSink()
    worker = OutboxWorker(store, sink2, **FAST)  # type: ignore[arg-type]
    worker.start()
    assert worker.drain(10.0)
    worker.stop()
    assert sink2.keys == keys
    store.close()


def test_a_crash_between_send_and_ack_resends_with_the_same_key(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """At-least-once: a delivery whose ack is lost is sent again; the receiver drops it by key."""
    keys = _record(store, 3)
    real_ack = store.outbox_ack
    calls = {"n": 0}

    def flaky_ack(message_id: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("simulated crash before the ack was written")
        real_ack(message_id)

    monkeypatch.setattr(store, "outbox_ack", flaky_ack)
    sink = ListSink()
    worker = OutboxWorker(store, sink, **FAST)  # type: ignore[arg-type]
    worker.start()
    assert worker.drain(10.0)
    worker.stop()
    assert sink.keys == [keys[0], keys[1], keys[1], keys[2]]
    assert list(dict.fromkeys(sink.keys)) == keys  # dedup by idempotency key restores the exact sequence


def test_a_bug_in_a_sink_is_retried_not_fatal(store: Store) -> None:
    keys = _record(store, 3)
    sink = ListSink()
    sink.bug = 2
    worker = OutboxWorker(store, sink, **FAST)  # type: ignore[arg-type]
    worker.start()
    assert worker.drain(10.0)
    worker.stop()
    assert sink.keys == keys and worker.failures == 2 and "RuntimeError: sink bug" in (worker.last_error or "")


def test_sinks_are_independent(store: Store) -> None:
    """One sink down does not hold another back: a thread and a queue each."""
    keys = _record(store, 5, sinks=("a", "b"))
    a, b = ListSink("a"), ListSink("b")
    b.down = True
    wa, wb = OutboxWorker(store, a, **FAST), OutboxWorker(store, b, **FAST)  # type: ignore[arg-type]
    wa.start()
    wb.start()
    assert wa.drain(10.0)
    assert a.keys == keys and b.received == [] and wb.backlog == 5
    b.down = False
    assert wb.drain(10.0)
    wa.stop()
    wb.stop()
    assert b.keys == keys


def test_sent_rows_are_not_delivered_again(store: Store) -> None:
    store.record(make_record(1, decision="reject", score=0.9), sinks=("list",), sent=("modbus",))
    modbus = ListSink("modbus")
    worker = OutboxWorker(store, modbus, **FAST)  # type: ignore[arg-type]
    worker.start()
    assert worker.drain(1.0)
    time.sleep(0.1)
    worker.stop()
    assert modbus.received == []


def test_backoff_grows_with_jitter_and_is_capped(store: Store) -> None:
    worker = OutboxWorker(store, ListSink(), backoff_s=(0.5, 30.0), seed=1)
    for streak in range(1, 12):
        nominal = min(30.0, 0.5 * 2 ** (streak - 1))
        assert 0.5 * nominal <= worker._delay(streak) <= nominal
    assert max(worker._delay(100) for _ in range(50)) <= 30.0


def test_bad_settings_are_refused(store: Store) -> None:
    with pytest.raises(LineguardError, match="backoff_s"):
        OutboxWorker(store, ListSink(), backoff_s=(0.0, 1.0))
    with pytest.raises(LineguardError, match="backoff_s"):
        OutboxWorker(store, ListSink(), backoff_s=(5.0, 1.0))
    nameless = ListSink("")
    with pytest.raises(LineguardError, match="has no name"):
        OutboxWorker(store, nameless)
