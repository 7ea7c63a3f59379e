"""TARGETS P5 for the station API: `lineguard serve` start to first decision over HTTP, its memory, its latency.

Usage:
    .venv/bin/python benchmarks/serve_api.py                   # the config's default model, random weights
    .venv/bin/python benchmarks/serve_api.py --bundle BUNDLE    # an exported bundle
    .venv/bin/python benchmarks/serve_api.py --rounds 3 --requests 300

Each round starts `lineguard serve` in a fresh process (real store in a temp folder, one JSON-lines
sink) on 127.0.0.1 and a free port, and measures: the time from starting the process to the first
``POST /v1/predict`` answered 200 (P5's "first decision", here through Python start, uvicorn and
HTTP); then ``--requests`` sequential uploads of a PNG at the model's input size over one
keep-alive connection (upload, bounded read, decode, decision, store transaction, outbox row),
median and p99 per request as the client sees it; the server's resident memory (VmRSS) after them
and its peak (VmHWM); and how long it takes to exit after SIGTERM. Latency depends on the
architecture, not on the weights. Writes the ``## Station API (lineguard serve)`` section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import load_note, percentile, write_section

P5_RSS_MB, P5_FIRST_S = 150.0, 1.0


def _random_bundle(name: str, out: Path) -> Path:
    """Export the config's model ``name`` with random weights at the configured input size into a bundle."""
    from lineguard import export as ex
    from lineguard.config import load_config
    from lineguard.edge import Decision
    from lineguard.models import create_model
    from lineguard.preprocess import params_from_config

    cfg = load_config(None)
    params = params_from_config(cfg.preprocess)
    model = create_model(name, 2, cfg.train.width).eval()
    golden = ex.synthetic_golden(params, 8)
    result = ex.export_onnx(model, params, out.with_suffix(".onnx"), golden=golden)
    return ex.write_bundle(out, result.path, classes=["good", "bad"], positive_class="bad", preprocess=params,
                           golden=golden, expected=result.expected, parity=result.parity, decision=Decision(0.5),
                           precision="fp32", opset=18, name=name, version="random-weights")


def _png(size: tuple[int, int]) -> bytes:
    import numpy as np
    from PIL import Image

    img = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _status_kb(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return float(line.split()[1])
    return float("nan")


def one_round(bundle: Path, requests: int, work: Path) -> dict[str, float]:
    import httpx

    token = "bench-token-" + "x" * 30
    (work / "token").write_text(token)
    (work / "token").chmod(0o600)
    station = {"station": "bench", "store": {"path": str(work / "store.db")},
               "sinks": [{"kind": "jsonl", "path": str(work / "decisions.jsonl")}]}
    (work / "station.yaml").write_text(json.dumps(station))
    from lineguard.edge import load_bundle

    body = _png(load_bundle(bundle, check_model=False).preprocess.size)
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "image/png"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "lineguard.cli", "serve", "--bundle", str(bundle), "--config",
                             str(work / "station.yaml"), "--port", "0", "--token-file", str(work / "token")],
                            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:
            if "listening on " in line:
                url = line.split("listening on ", 1)[1].split()[0]
                break
        if not url:
            raise SystemExit("lineguard serve did not start")
        with httpx.Client(base_url=url, timeout=30) as c:
            while True:
                r = c.post("/v1/predict", content=body, headers=auth)
                if r.status_code == 200:
                    break
            first_s = time.perf_counter() - t0
            times = []
            for _ in range(requests):
                t = time.perf_counter()
                r = c.post("/v1/predict", content=body, headers=auth)
                times.append((time.perf_counter() - t) * 1000)
                if r.status_code != 200:
                    raise SystemExit(f"request failed: {r.text}")
        rss, hwm = _status_kb(proc.pid, "VmRSS") / 1024, _status_kb(proc.pid, "VmHWM") / 1024
        t_term = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        exit_s = time.perf_counter() - t_term
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"first_s": first_s, "median_ms": statistics.median(times), "p99_ms": percentile(times, 99),
            "per_s": 1000.0 / statistics.mean(times), "rss_mb": rss, "hwm_mb": hwm, "exit_s": exit_s, "rc": rc}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="bundle to serve (default: the config's model, random weights)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--no-write", action="store_true", help="print only, do not touch docs/benchmarks.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lineguard-serve-bench-") as tmp:
        bundle = args.bundle
        label = str(bundle)
        if bundle is None:
            from lineguard.config import load_config

            name = load_config(None).train.model
            bundle = _random_bundle(name, Path(tmp) / name)
            label = f"{name} (default model, random weights)"
        runs = []
        for i in range(args.rounds):
            work = Path(tmp) / f"round{i}"
            work.mkdir()
            r = one_round(bundle, args.requests, work)
            runs.append(r)
            print(f"  round {i + 1}/{args.rounds}: first decision {r['first_s']:.2f} s, median {r['median_ms']:.2f} ms, "
                  f"p99 {r['p99_ms']:.2f} ms, RSS {r['rss_mb']:.0f} MB (peak {r['hwm_mb']:.0f}), "
                  f"exit {r['exit_s']:.2f} s rc {r['rc']}", flush=True)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def mark(value: float, target: float) -> str:
        return "✅" if value <= target else "❌"

    body = "\n".join([
        f"`lineguard serve` over a real store (SQLite WAL) with one JSON-lines sink, bundle {label}; "
        f"{args.requests} sequential `POST /v1/predict` of a PNG at the model's input size over one keep-alive "
        f"connection on 127.0.0.1, per round; median over {args.rounds} fresh-process rounds. TARGETS P5: "
        f"RSS ≤ {P5_RSS_MB:.0f} MB, first decision ≤ {P5_FIRST_S:.0f} s after start.",
        "",
        "| start → first decision over HTTP s | request median ms | request p99 ms | requests/s (one client) | "
        "RSS MB | peak RSS MB | SIGTERM → exit s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| {med('first_s'):.2f} {mark(med('first_s'), P5_FIRST_S)} | {med('median_ms'):.2f} | {med('p99_ms'):.2f} | "
        f"{med('per_s'):.0f} | {med('rss_mb'):.0f} {mark(med('rss_mb'), P5_RSS_MB)} | {med('hwm_mb'):.0f} | "
        f"{med('exit_s'):.2f} |",
        "",
        "The first decision includes starting Python, importing FastAPI/uvicorn/onnxruntime, opening the store "
        "and the model, and one HTTP round trip; a request includes the upload, the bounded read, PNG decoding, "
        "preprocessing, inference, the store transaction and the outbox row. " + load_note(),
    ])
    print(body)
    if not args.no_write:
        write_section("Station API (lineguard serve)", body, "python benchmarks/serve_api.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
