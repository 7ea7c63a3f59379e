"""Stub of the outbox's public names until the STORE helper's ``edge/outbox.py`` is merged.

Only the names the sinks need, with the signatures of interfaces-12.md: the message a
sink is handed, the :class:`Sink` protocol, and the two errors a sink raises. The
merge replaces this file with the real outbox (rows in the store, one worker per sink).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from lineguard import LineguardError


@dataclass(frozen=True)
class OutboxMessage:
    """One pending delivery: the row id (the order), the sink's name, the idempotency key and the JSON payload."""

    id: int
    sink: str
    key: str
    payload: dict[str, Any]
    attempts: int
    created_at: float


class Sink(Protocol):
    """Where the outbox delivers to: ``send`` returns once delivered, or raises within its timeout."""

    name: str

    def send(self, message: OutboxMessage) -> None: ...

    def close(self) -> None: ...


class SinkError(LineguardError):
    """A transient delivery failure (broker down, timeout, 5xx): the outbox retries with backoff."""


class SinkRejected(SinkError):
    """The receiver refused this message for good (e.g. HTTP 4xx): it is marked dead and the order goes on."""
