"""The persistent outbox: every message to the line leaves from the local store, in order, at least once.

:meth:`lineguard.edge.store.Store.record` writes one ``pending`` outbox row per sink in
the same transaction as the decision, so a decision is never recorded without its
messages, nor sent without being recorded. One :class:`OutboxWorker` thread per sink
then delivers that sink's rows strictly in id order:

- a transient failure (:class:`SinkError`, or any other exception from the sink) is
  retried with capped exponential backoff and jitter; the message stays at the head of
  the sink's queue, so message n+1 is never sent before n is acknowledged or dead;
- a permanent rejection (:class:`SinkRejected`, e.g. an HTTP 4xx) marks the message
  ``dead`` (counted, its reason kept) and delivery goes on with the next one;
- the row is marked ``sent`` only after ``sink.send`` returned, so a kill between the
  two resends that one message on restart: at-least-once, and every message carries its
  idempotency key (``message.key`` = the record's ``station:frame_id``) for the receiver
  to drop the repeat.

The queue of each sink is bounded (``Store(max_pending=...)``): beyond it the OLDEST
pending rows of that sink are marked dead with reason ``outbox_full`` and counted
(``counts()["outbox_full_dead"]``) -- never dropped silently. Sinks themselves live in
:mod:`lineguard.edge.sinks`; here is only the protocol they implement.

Imports the standard library only.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from lineguard import LineguardError

if TYPE_CHECKING:
    from lineguard.edge.store import Store

__all__ = ["OutboxMessage", "OutboxWorker", "Sink", "SinkError", "SinkRejected"]


@dataclass(frozen=True)
class OutboxMessage:
    """One queued message: ``payload`` is the record's JSON dict; ``key`` its idempotency key."""

    id: int
    sink: str
    key: str
    payload: dict[str, Any]
    attempts: int
    created_at: float
    next_attempt_at: float = field(default=0.0, compare=False)


class SinkError(LineguardError):
    """A transient delivery failure (broker down, timeout, 5xx): the message is retried with backoff."""


class SinkRejected(SinkError):
    """A permanent rejection of this one message (e.g. HTTP 4xx): it is marked dead and order continues."""


@runtime_checkable
class Sink(Protocol):
    """Where outbox messages go (MQTT, webhook, Modbus, JSON lines: :mod:`lineguard.edge.sinks`).

    ``send`` returns only once the receiver acknowledged the message (PUBACK, 2xx, the
    register write), raises :class:`SinkError` / :class:`SinkRejected` otherwise, and
    never blocks longer than its own timeout.
    """

    name: str

    def send(self, message: OutboxMessage) -> None: ...

    def close(self) -> None: ...


class OutboxWorker:
    """Delivers one sink's pending messages from the store, strictly in id order, on its own thread.

    ``backoff_s=(first, cap)``: the n-th consecutive failure waits
    ``min(cap, first * 2**(n-1))`` scaled by a random factor in [0.5, 1] (jitter, so many
    stations do not retry in step). ``poll_s`` is how often an idle worker looks for rows
    written without :meth:`wake`. :meth:`wake` cuts an idle wait short (a new message);
    it does not cut a backoff short, so a sink that is down is not hammered.
    Counters: ``delivered``, ``failures`` (transient), ``rejected`` (dead), ``last_error``.
    """

    def __init__(
        self,
        store: Store,
        sink: Sink,
        *,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        batch: int = 100,
        poll_s: float = 1.0,
        seed: int | None = None,
    ) -> None:
        first, cap = backoff_s
        if not 0 < first <= cap:
            raise LineguardError(f"backoff_s must be (first, cap) with 0 < first <= cap, got {backoff_s}")
        if batch < 1 or poll_s <= 0:
            raise LineguardError(f"batch must be >= 1 and poll_s > 0, got batch={batch}, poll_s={poll_s}")
        name = getattr(sink, "name", "")
        if not isinstance(name, str) or not name:
            raise LineguardError(f"the sink {sink!r} has no name; every sink needs a unique 'name'")
        self.store, self.sink, self.name = store, sink, name
        self.backoff_s = (float(first), float(cap))
        self.batch, self.poll_s = int(batch), float(poll_s)
        self._rng = random.Random(seed)
        self._wake, self._stop, self._idle = threading.Event(), threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._streak = 0  # consecutive transient failures of the head message
        self.delivered = 0
        self.failures = 0
        self.rejected = 0
        self.last_error: str | None = None

    # --- control ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the delivery thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"outbox-{self.name}", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """A new message is waiting: deliver now instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after the message in flight (if any); undelivered rows stay pending in the store."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def drain(self, timeout_s: float) -> bool:
        """Wait until this sink has nothing pending; True if it got there within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        self.wake()
        while True:
            if self.backlog == 0:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.alive:
                return self.backlog == 0
            self._idle.wait(min(remaining, 0.05))

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def backlog(self) -> int:
        """Pending messages of this sink (in the store)."""
        return self.store.outbox_backlog(self.name)

    def stats(self) -> dict[str, Any]:
        return {"sink": self.name, "backlog": self.backlog, "delivered": self.delivered,
                "failures": self.failures, "rejected": self.rejected, "last_error": self.last_error,
                "alive": self.alive}

    # --- the loop ---------------------------------------------------------------------------------

    def _delay(self, streak: int) -> float:
        first, cap = self.backoff_s
        return min(cap, first * 2.0 ** min(streak - 1, 60)) * self._rng.uniform(0.5, 1.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before reading, so a wake() during the read is not lost
            try:
                messages = self.store.outbox_pending(self.name, self.batch)
            except Exception as exc:  # the store closed under us, or a read failed: say so, retry later
                self.last_error = f"reading the outbox: {exc}"
                self._stop.wait(self.poll_s)
                continue
            if not messages:
                self._idle.set()
                self._wake.wait(self.poll_s)
                self._idle.clear()
                continue
            try:
                for message in messages:
                    if not self._deliver(message):
                        break  # head-of-line failed (or stopping): re-read from the store, keep the order
            except Exception as exc:  # the store failed under us (closed, disk error): keep the thread
                self.last_error = f"outbox store: {type(exc).__name__}: {exc}"
                self._stop.wait(self.poll_s)

    def _deliver(self, message: OutboxMessage) -> bool:
        """Send one message until it is acknowledged or dead; False when the worker is stopping."""
        # A restart keeps the backoff the previous run chose (capped, so a clock jump cannot stall it).
        wait = min(message.next_attempt_at - time.time(), self.backoff_s[1])
        if wait > 0 and self._stop.wait(wait):
            return False
        while not self._stop.is_set():
            # Read in batches, sent one by one: a row the bound marked dead meanwhile is not sent.
            if self.store.outbox_status(message.id) != "pending":
                return True
            try:
                self.sink.send(message)
            except SinkRejected as exc:
                self.rejected += 1
                self.last_error = f"{message.key}: rejected: {exc}"
                self._streak = 0
                self.store.outbox_dead(message.id, f"rejected: {exc}")
                return True
            except Exception as exc:  # SinkError, or a bug in a sink: transient, retry in order
                self.failures += 1
                self._streak += 1
                self.last_error = f"{message.key}: {type(exc).__name__}: {exc}"
                delay = self._delay(self._streak)
                try:
                    self.store.outbox_retry(message.id, self.last_error, time.time() + delay)
                except Exception as store_exc:
                    self.last_error = f"{self.last_error} (and recording it failed: {store_exc})"
                if self._stop.wait(delay):
                    return False
                message = OutboxMessage(message.id, message.sink, message.key, message.payload,
                                        message.attempts + 1, message.created_at)
                continue
            self._streak = 0
            self.delivered += 1
            try:
                self.store.outbox_ack(message.id)
            except Exception as exc:  # delivered but not marked: it will be sent again (at-least-once)
                self.last_error = f"{message.key}: delivered, but marking it sent failed: {exc}"
                self._stop.wait(self.poll_s)
                return False
            return True
        return False
