"""WebhookSink against a real HTTP server on 127.0.0.1 (the standard library's, scripted per request)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from lineguard.edge.outbox import OutboxMessage, SinkError, SinkRejected
from lineguard.edge.sinks import SinkSpec, WebhookSink, open_sink

pytestmark = pytest.mark.integration


class Receiver:
    """An HTTP server that answers each POST with the next scripted status, recording what it got."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[int | str] = []  # a status, or "slow" (hold the answer until released)
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers.items()),
                                          "body": json.loads(body)})
                step = receiver.script.pop(0) if receiver.script else 200
                if step == "slow":
                    receiver.release.wait(30)
                    step = 200
                status = int(step)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                reply = json.dumps({"status": status}).encode()
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?site=a"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = Receiver()
    try:
        yield server
    finally:
        server.close()


def message(i: int) -> OutboxMessage:
    return OutboxMessage(id=i, sink="webhook", key=f"st1:f{i}",
                         payload={"station": "st1", "frame_id": f"f{i}", "decision": "reject", "score": 0.9},
                         attempts=0, created_at=0.0)


def test_200_delivers_json_with_the_idempotency_key_and_token(receiver: Receiver) -> None:
    sink = WebhookSink(receiver.url, token="s3cret", timeout_s=5.0)
    receiver.script = [200, 202, 204]
    for i in (1, 2, 3):
        sink.send(message(i))  # every 2xx is delivered
    got = receiver.requests
    assert [r["headers"]["Idempotency-Key"] for r in got] == ["st1:f1", "st1:f2", "st1:f3"]
    assert got[0]["path"] == "/hook?site=a"
    assert got[0]["headers"]["Content-Type"] == "application/json"
    assert got[0]["headers"]["Authorization"] == "Bearer s3cret"
    assert got[0]["body"] == {**message(1).payload, "key": "st1:f1"}


def test_500_then_200_is_a_retry_with_the_same_key(receiver: Receiver) -> None:
    sink = WebhookSink(receiver.url, timeout_s=5.0)
    receiver.script = [500, 503, 200]
    with pytest.raises(SinkError, match="HTTP 500") as first:
        sink.send(message(1))
    assert not isinstance(first.value, SinkRejected)
    with pytest.raises(SinkError, match="HTTP 503"):
        sink.send(message(1))
    sink.send(message(1))
    assert [r["headers"]["Idempotency-Key"] for r in receiver.requests] == ["st1:f1"] * 3
    assert "Authorization" not in receiver.requests[0]["headers"]


@pytest.mark.parametrize("status", [400, 401, 404, 422, 302])
def test_client_errors_and_redirects_are_rejected_for_good(receiver: Receiver, status: int) -> None:
    receiver.script = [status]
    with pytest.raises(SinkRejected, match=f"HTTP {status}"):
        WebhookSink(receiver.url, timeout_s=5.0).send(message(1))
    assert len(receiver.requests) == 1  # a redirect is not followed


@pytest.mark.parametrize("status", [408, 429])
def test_timeout_and_rate_limit_statuses_are_retried(receiver: Receiver, status: int) -> None:
    receiver.script = [status]
    with pytest.raises(SinkError, match=f"HTTP {status}") as err:
        WebhookSink(receiver.url, timeout_s=5.0).send(message(1))
    assert not isinstance(err.value, SinkRejected)


def test_a_slow_server_is_a_timeout_sink_error(receiver: Receiver) -> None:
    receiver.script = ["slow"]
    sink = WebhookSink(receiver.url, timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(SinkError, match=r"timeout 0\.3 s") as err:
        sink.send(message(1))
    assert time.monotonic() - started < 10.0  # gives up instead of hanging (not a speed check)
    assert not isinstance(err.value, SinkRejected)
    receiver.release.set()
    sink.send(message(1))  # the retry goes through once the server answers again


def test_no_server_is_a_sink_error_without_the_query_in_the_message(receiver: Receiver) -> None:
    url = receiver.url.replace("site=a", "token=hidden")
    receiver.close()
    sink = open_sink(SinkSpec("webhook", {"url": url, "timeout_s": 1.0, "name": "erp"}))
    assert sink.name == "erp"
    with pytest.raises(SinkError) as err:
        sink.send(message(1))
    assert "hidden" not in str(err.value) and "/hook" in str(err.value)
