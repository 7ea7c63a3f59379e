"""`lineguard serve` for real: uvicorn on 127.0.0.1 in its own process over the real store, outbox, sink and
runtime, with the training stack blocked. Decisions reach the store (and the JSON-lines sink); hostile uploads
(R2); hot swap under load (R6); SIGTERM drain (R10); the edge loop in the same process; the generated token."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.unit._edge_bundles import make_toy_bundle, make_version_2, rewrite_meta
from tests.unit.test_edge_api import HOSTILE, png

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOKEN = "integration-token-" + "x" * 24
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# `lineguard serve` imports lineguard.config (the CLI's trust and limits); the training stack never.
BLOCKED = ("torch", "mlflow", "sklearn", "pandas", "optuna", "onnx", "onnxscript", "lineguard.train",
           "lineguard.export", "lineguard.tracking", "lineguard.models")
LAUNCH = r"""
import importlib.abc, sys
BLOCKED = {blocked!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(name + " is blocked: lineguard serve must not need it")
        return None
sys.meta_path.insert(0, Blocker())
sys.argv = ["lineguard", "serve", *{args!r}]
from lineguard.cli import main
main()
"""


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[str]
    store: Path
    sink: Path
    lines: list[str]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return "".join(self.lines)


def write_station(tmp: Path, **extra: Any) -> Path:
    cfg = {"station": "line1", "store": {"path": str(tmp / "store" / "line1.db")},
           "sinks": [{"kind": "jsonl", "path": str(tmp / "decisions.jsonl")}], **extra}
    path = tmp / "station.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def start(tmp: Path, bundle: Path, *args: str, token_file: bool = True, station: dict[str, Any] | None = None) -> Served:
    config = write_station(tmp, **(station or {}))
    cli = ["--bundle", str(bundle), "--config", str(config), "--port", "0", *args]
    if token_file:
        tf = tmp / "token"
        tf.write_text(TOKEN + "\n")
        tf.chmod(0o600)
        cli += ["--token-file", str(tf)]
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH.format(blocked=BLOCKED, args=cli)], cwd=tmp,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "listening on " in line:
            url = line.split("listening on ", 1)[1].split()[0]
            threading.Thread(target=lines.extend, args=(proc.stdout,), daemon=True).start()
            return Served(url, proc, tmp / "store" / "line1.db", tmp / "decisions.jsonl", lines)
    proc.kill()
    raise AssertionError("lineguard serve did not start:\n" + "".join(lines))


def stop(served: Served) -> int | None:
    if served.alive():
        served.proc.send_signal(signal.SIGTERM)
        try:
            return served.proc.wait(15)
        except subprocess.TimeoutExpired:
            served.proc.kill()
    return served.proc.poll()


def open_store(path: Path) -> Any:
    from lineguard.edge.store import Store

    return Store(path)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("serve")
    v1 = make_toy_bundle(d / "v1")
    v2 = make_version_2(v1, d / "v2")
    tampered = d / "tampered"
    shutil.copytree(v2, tampered)
    rewrite_meta(tampered, lambda m: m["decision"].update(default_threshold=0.99), reseal=False)
    return {"v1": v1, "v2": v2, "tampered": tampered}


@pytest.fixture
def served(tmp_path: Path, bundles: dict[str, Path]) -> Iterator[Served]:
    s = start(tmp_path, bundles["v1"], "--allow-hot-swap")
    try:
        yield s
    finally:
        stop(s)


def test_a_decision_over_http_is_in_the_store_and_the_sink(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as c:
        r = c.post("/v1/predict?recipe=vanilla", files={"image": ("cone.png", png(230), "image/png")}, headers=AUTH)
        assert r.status_code == 200, r.text
        rec = r.json()
        assert rec["decision"] == "reject" and rec["key"] == f"line1:{rec['frame_id']}" and rec["source"] == "api"
        rows = c.get("/v1/predictions?decision=reject").json()["items"]
        assert [row["key"] for row in rows] == [rec["key"]] and rows[0]["image"] is True
        image = c.get(f"/v1/predictions/{rows[0]['id']}/image")
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        fb = c.post("/v1/feedback", json={"prediction_id": rows[0]["id"], "label": "good"}, headers=AUTH)
        assert fb.status_code == 200, fb.text
        health = c.get("/v1/health").json()
        assert health["status"] == "ok" and health["store"]["outbox_backlog"] == {"jsonl": 0}
        assert c.get("/v1/ready").json()["ready"] is True
        metrics = c.get("/metrics").text
        assert 'lineguard_decisions_total{decision="reject",recipe="vanilla"} 1.0' in metrics
    assert stop(served) == 0, served.output()
    store = open_store(served.store)
    try:
        row = store.predictions(decision="reject")[0]
        assert row["key"] == rec["key"] and row["score"] == pytest.approx(rec["score"])
        assert store.image(row["id"]) is not None and store.integrity_check() == "ok"
        assert [f["label"] for f in store.feedback(prediction_id=row["id"])] == ["good"]
    finally:
        store.close()
    sent = [json.loads(line) for line in served.sink.read_text().splitlines()]
    assert [m["key"] for m in sent] == [rec["key"]]


def test_hostile_uploads_over_http_and_the_server_stays_up(served: Served) -> None:
    """R2 against the real server: each hostile upload is a 4xx with one line of JSON; the process lives on."""
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for name, (data, ctype, status, reasons) in sorted(HOSTILE.items()):
            resp = client.post("/v1/predict", content=data, headers={**AUTH, "Content-Type": ctype})
            assert resp.status_code == status and resp.json()["reason"] in reasons, (name, resp.text)
            assert "\n" not in resp.json()["error"]
            assert served.alive() and client.get("/v1/health").status_code == 200
        big = client.post("/v1/predict", content=b"\x00" * 51_000_000, headers=AUTH)  # declared: refused unread
        assert big.status_code == 413 and big.json()["reason"] == "too_large"
        ok = client.post("/v1/predict", content=png(230), headers=AUTH)
        assert ok.status_code == 200 and ok.json()["decision"] == "reject"
        metrics = client.get("/metrics").text
        assert 'lineguard_api_uploads_refused_total{reason="too_large"} 3.0' in metrics
        assert len(client.get("/v1/predictions").json()["items"]) == 1  # nothing hostile was recorded
    assert served.alive()


def test_a_chunked_upload_is_cut_off_at_the_limit(served: Served) -> None:
    """No Content-Length: the server stops reading at the limit and answers 413 while the client still sends."""
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"\x00" * 1_000_000
        reply = b""
        try:
            for _ in range(200):  # up to 200 MB, four times the limit
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except OSError:
            pass  # the server answered and closed: what is expected
        try:
            while b"\r\n\r\n" not in reply:
                part = sock.recv(65536)
                if not part:
                    break
                reply += part
        except OSError:
            pass
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert served.alive()


def test_hot_swap_under_load_drops_no_request(served: Served, bundles: dict[str, Path]) -> None:
    """R6: a client decides without pause while the model is swapped; zero failed requests; a tampered bundle
    is refused and the swapped-in model keeps serving. The store holds every decision with its model."""
    stop_event = threading.Event()
    results: list[tuple[int, str, str]] = []
    failures: list[str] = []

    def hammer() -> None:
        with httpx.Client(base_url=served.url, timeout=30) as c:
            while not stop_event.is_set():
                try:
                    r = c.post("/v1/predict", content=png(200), headers=AUTH)
                    body = r.json()
                    results.append((r.status_code, body.get("bundle_version", ""), body.get("key", "")))
                    if r.status_code != 200:
                        failures.append(r.text)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 60
        while len(results) < n and not failures:
            assert time.monotonic() < deadline, "the client stopped getting answers"
            time.sleep(0.01)

    t = threading.Thread(target=hammer)
    t.start()
    try:
        with httpx.Client(base_url=served.url, timeout=60) as c:
            wait_for(5)
            swap = c.post("/v1/model", json={"path": str(bundles["v2"])}, headers=AUTH)
            assert swap.status_code == 200, swap.text
            assert swap.json()["version"] == "2" and swap.json()["generation"] == 1
            wait_for(len(results) + 5)
            bad = c.post("/v1/model", json={"path": str(bundles["tampered"])}, headers=AUTH)
            assert bad.status_code == 422 and bad.json()["reason"] == "swap_refused", bad.text
            assert "integrity" in bad.json()["error"] and "keeps serving" in bad.json()["error"]
            wait_for(len(results) + 5)
            model = c.get("/v1/model").json()
            health = c.get("/v1/health").json()
    finally:
        stop_event.set()
        t.join(60)
    assert failures == []
    versions = [v for _, v, _ in results]
    assert versions[0] == "1" and versions[-1] == "2"
    assert set(versions[versions.index("2"):]) == {"2"}  # once switched, never back; the tampered one never served
    assert model["version"] == "2" and model["swaps"] == {"ok": 1, "refused": 1, "rolled_back": 0, "busy": 0}
    assert health["model"]["version"] == "2"
    assert stop(served) == 0, served.output()
    store = open_store(served.store)
    try:
        rows = store.predictions(limit=10_000)
    finally:
        store.close()
    assert [(r["key"], r["bundle_version"]) for r in rows] == [(k, v) for _, v, k in results]


def test_sigterm_drains_in_flight_refuses_new_and_flushes(served: Served) -> None:
    """R10: an upload in flight when SIGTERM arrives is decided and stored; a new one gets 503; exit 0 in 10 s."""
    host, port = served.url.removeprefix("http://").split(":")
    body = png(230)
    with httpx.Client(base_url=served.url, timeout=30) as c:
        assert c.post("/v1/predict", content=png(20), headers=AUTH).status_code == 200
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"POST /v1/predict?recipe=vanilla HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                 f"Content-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:10])
    with httpx.Client(base_url=served.url, timeout=30) as c:
        deadline = time.monotonic() + 30
        while c.get("/v1/health").json()["api"]["inflight"] != 1:
            assert time.monotonic() < deadline, "the upload never reached the handler"
            time.sleep(0.02)
        served.proc.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        while c.get("/v1/health").json()["status"] != "draining":
            time.sleep(0.02)
        refused = c.post("/v1/predict", content=png(230), headers=AUTH)
        assert refused.status_code == 503 and refused.json()["reason"] == "draining"
        assert c.get("/v1/ready").status_code == 503
    sock.sendall(body[10:])
    reply = b""
    while b"}" not in reply:
        part = sock.recv(65536)
        if not part:
            break
        reply += part
    sock.close()
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    in_flight = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    rc = served.proc.wait(timeout=max(0.1, 10 - (time.monotonic() - t_term)))
    assert rc == 0, served.output()
    store = open_store(served.store)
    try:
        keys = [r["key"] for r in store.predictions()]
        assert len(keys) == 2 and keys[-1] == in_flight["key"] and store.integrity_check() == "ok"
        assert store.outbox_backlog() == 0  # the outbox delivered before the store closed
    finally:
        store.close()
    assert in_flight["key"] in served.sink.read_text()
    assert "intake closed" in served.output() and "store flushed and closed" in served.output()


def test_the_edge_loop_runs_in_the_same_process(tmp_path: Path, bundles: dict[str, Path]) -> None:
    """--source: the conveyor video is decided into the store while the API answers; both in one process."""
    from lineguard.synth import write_video

    video, _ = write_video(str(tmp_path / "belt.avi"), cones=3)
    s = start(tmp_path, bundles["v1"], "--source", video)
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            deadline = time.monotonic() + 60
            while c.get("/v1/health").json()["runtime"]["source"].get("state") != "ended":
                assert time.monotonic() < deadline, c.get("/v1/health").text
                time.sleep(0.1)
            frames = c.get("/v1/health").json()["runtime"]["frames"]
            assert frames > 10
            # The source ends when it has read its last frame; the runtime records the batch it took after that
            # (health counts a batch's frames when it is taken). Every taken frame must reach the store.
            while len(c.get("/v1/predictions?limit=1000").json()["items"]) < frames:
                assert time.monotonic() < deadline, c.get("/v1/health").text
                time.sleep(0.1)
            pushed = c.post("/v1/predict", content=png(230), headers=AUTH)
            assert pushed.status_code == 200
            rows = c.get("/v1/predictions?limit=1000").json()["items"]
            assert {r["source"].split(":")[0] for r in rows} == {"video", "api"} and len(rows) == frames + 1
    finally:
        assert stop(s) == 0, s.output()


def test_without_a_token_file_one_is_generated_owner_only(tmp_path: Path, bundles: dict[str, Path]) -> None:
    s = start(tmp_path, bundles["v1"], token_file=False)
    try:
        token_path = tmp_path / "store" / "line1.api-token"
        assert f"new token written to {token_path} (mode 600)" in s.output()
        assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
        token = token_path.read_text().strip()
        assert token not in s.output()
        with httpx.Client(base_url=s.url, timeout=30) as c:
            assert c.post("/v1/predict", content=png(230)).status_code == 401
            ok = c.post("/v1/predict", content=png(230), headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200
            assert c.post("/v1/model", json={"path": str(bundles["v2"])},
                          headers={"Authorization": f"Bearer {token}"}).status_code == 403  # hot swap is off
            assert c.get("/v1/health", headers={"Host": "rebind.example"}).status_code == 400
    finally:
        stop(s)
