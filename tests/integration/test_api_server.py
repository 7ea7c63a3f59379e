"""The API's server machinery (uvicorn, the drain on SIGTERM) over an in-test station, in its own process.

Written before the store and runtime branches were merged; test_serve.py runs the same checks through
`lineguard serve` over the real station. Delete this file and _serve_station.py once test_serve.py runs on main.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.unit._edge_bundles import make_toy_bundle, rewrite_meta
from tests.unit.test_edge_api import HOSTILE, png

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
TOKEN = "integration-token-" + "x" * 24
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[str]
    dump: Path
    lines: list[str]

    def alive(self) -> bool:
        return self.proc.poll() is None


def start(tmp: Path, bundle: Path, *extra: str) -> Served:
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    dump = tmp / "dump.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration._serve_station", "--bundle", str(bundle), "--token-file",
         str(token_file), "--dump", str(dump), *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
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
            threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]
            return Served(url, proc, dump, lines)
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(lines))


def stop(served: Served) -> None:
    if served.alive():
        served.proc.send_signal(signal.SIGTERM)
        try:
            served.proc.wait(15)
        except subprocess.TimeoutExpired:
            served.proc.kill()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("serve")
    v1 = make_toy_bundle(d / "v1")
    v2 = d / "v2"
    shutil.copytree(v1, v2)

    def to_v2(meta: dict[str, Any]) -> None:
        meta["version"] = "2"
        meta["decision"]["default_threshold"] = 0.9
        meta["decision"]["per_recipe"] = {}

    rewrite_meta(v2, to_v2)
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


def test_hostile_uploads_over_http_and_the_server_stays_up(served: Served) -> None:
    """R2 against the real server: each hostile upload is a 4xx with one line of JSON; the process lives on."""
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for name, (data, ctype, status, reasons) in sorted(HOSTILE.items()):
            resp = client.post("/v1/predict", content=data, headers={**AUTH, "Content-Type": ctype})
            assert resp.status_code == status and resp.json()["reason"] in reasons, (name, resp.text)
            assert "\n" not in resp.json()["error"]
            assert served.alive() and client.get("/v1/health").status_code == 200
        # a body over the byte limit, declared: refused before it is read
        big = client.post("/v1/predict", content=b"\x00" * 51_000_000, headers=AUTH)
        assert big.status_code == 413 and big.json()["reason"] == "too_large"
        ok = client.post("/v1/predict", content=png(230), headers=AUTH)
        assert ok.status_code == 200 and ok.json()["decision"] == "reject"
        metrics = client.get("/metrics").text
        assert 'lineguard_api_uploads_refused_total{reason="too_large"} 3.0' in metrics
    assert served.alive()


def test_a_chunked_upload_is_cut_off_at_the_limit(served: Served) -> None:
    """No Content-Length: the server stops reading at the limit and answers 413 while the client still sends."""
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"\x00" * 1_000_000
        sent = 0
        reply = b""
        try:
            for _ in range(200):  # up to 200 MB, four times the limit
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
        except OSError:
            pass  # the server answered and closed: exactly what is expected
        sock.settimeout(30)
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
    is refused and the swapped-in model keeps serving."""
    stop_event = threading.Event()
    results: list[tuple[int, str]] = []
    failures: list[str] = []

    def hammer() -> None:
        with httpx.Client(base_url=served.url, timeout=30) as c:
            while not stop_event.is_set():
                try:
                    r = c.post("/v1/predict", content=png(200), headers=AUTH)
                    results.append((r.status_code, r.json().get("bundle_version", "")))
                    if r.status_code != 200:
                        failures.append(r.text)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    t = threading.Thread(target=hammer)
    t.start()
    try:
        with httpx.Client(base_url=served.url, timeout=60) as c:
            while len(results) < 5:
                time.sleep(0.01)
            swap = c.post("/v1/model", json={"path": str(bundles["v2"])}, headers=AUTH)
            assert swap.status_code == 200, swap.text
            assert swap.json()["version"] == "2" and swap.json()["generation"] == 1
            n = len(results)
            while len(results) < n + 5:
                time.sleep(0.01)
            bad = c.post("/v1/model", json={"path": str(bundles["tampered"])}, headers=AUTH)
            assert bad.status_code == 422 and bad.json()["reason"] == "swap_refused", bad.text
            assert "integrity" in bad.json()["error"] and "keeps serving" in bad.json()["error"]
            n = len(results)
            while len(results) < n + 5:
                time.sleep(0.01)
            model = c.get("/v1/model").json()
    finally:
        stop_event.set()
        t.join(60)
    assert failures == []
    versions = [v for _, v in results]
    assert versions[0] == "1" and versions[-1] == "2"
    first_v2 = versions.index("2")
    assert set(versions[first_v2:]) == {"2"}  # once switched, never back: the tampered one never served
    assert model["version"] == "2" and model["swaps"] == {"ok": 1, "refused": 1, "rolled_back": 0, "busy": 0}


def test_hot_swap_is_refused_when_not_enabled(tmp_path: Path, bundles: dict[str, Path]) -> None:
    s = start(tmp_path, bundles["v1"])
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            r = c.post("/v1/model", json={"path": str(bundles["v2"])}, headers=AUTH)
            assert r.status_code == 403 and c.get("/v1/model").json()["version"] == "1"
            assert c.post("/v1/model", json={"path": str(bundles["v2"])}).status_code == 401
    finally:
        stop(s)


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
    assert rc == 0, "".join(served.lines)
    stored = json.loads(served.dump.read_text())
    assert [r["key"] for r in stored][-1] == in_flight["key"] and len(stored) == 2
    assert any("intake closed" in line for line in served.lines)
    assert any("store flushed and closed" in line for line in served.lines)
