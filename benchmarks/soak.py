"""TARGETS R9: a soak run -- a station at 30 fps for N minutes; memory, open files and threads over time.

Usage:
    .venv/bin/python benchmarks/soak.py                      # 30 minutes, the toy bundle
    .venv/bin/python benchmarks/soak.py --minutes 2 --no-write
    .venv/bin/python benchmarks/soak.py --bundle BUNDLE --fps 30 --sample-s 10

The station is built exactly as ``lineguard edge run`` builds it (``open_station``): a
synthetic conveyor video looped and read at ``--fps`` (as a camera delivers frames), the
SQLite store with its default sampling, and a JSON-lines sink delivering through the
outbox. Every ``--sample-s`` seconds this process samples its resident memory (VmRSS),
open file descriptors and threads. Growth is measured from the first sample after the
warm-up (a tenth of the run, at most 60 s: imports, caches and SQLite's page cache
settle) to the end. R9 asks for memory growth <= 20 MB and flat file handles and threads.
Writes the ``## Soak (R9)`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import args_for_docs, load_note, write_section

REPO = Path(__file__).resolve().parent.parent

R9_GROWTH_MB = 20.0


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return float(line.split()[1])
    return float("nan")


def sample() -> dict[str, float]:
    """This process now: RSS (MB), open file descriptors, threads (the kernel's count)."""
    return {"rss_mb": _status("VmRSS") / 1024.0, "fds": float(len(os.listdir("/proc/self/fd"))),
            "threads": _status("Threads")}


def _spread(values: list[float]) -> dict[str, Any]:
    """Range of a count over the run, and whether it is flat: no higher in the second half than in the first.

    A count that moves by one (a store reader connection or a worker's short-lived
    thread caught by the sample) is not a leak; one that keeps climbing is.
    """
    half = max(1, len(values) // 2)
    first, second = values[:half], values[half:] or values[:half]
    return {"min": int(min(values)), "max": int(max(values)), "last": int(values[-1]),
            "flat": max(second) <= max(first)}


def soak(bundle: Path, video: Path, workdir: Path, minutes: float, fps: float, sample_s: float) -> dict[str, Any]:
    """Run the station for ``minutes`` in this process, sampling it; the figures as a dict."""
    from lineguard.edge.sources import VideoFileSource
    from lineguard.edge.station import load_station_config, open_station

    cfg = load_station_config(None, {"station": "soak", "store.path": str(workdir / "soak.db")},
                              [{"kind": "jsonl", "path": str(workdir / "decisions.jsonl")}])
    source = VideoFileSource(video, loop=True, realtime=True)
    source.fps = fps  # pace at the asked rate whatever the file says
    station = open_station(cfg, bundle, source=source)
    samples: list[dict[str, float]] = []
    t0 = time.monotonic()
    done = threading.Event()

    def take() -> dict[str, float]:
        s = sample()
        s["t_s"] = time.monotonic() - t0
        s["decided"] = float(station.runtime.decided)
        return s

    def sampler() -> None:
        while not done.wait(sample_s):
            s = take()
            samples.append(s)
            print(f"  {s['t_s']:7.1f} s  decided {s['decided']:8.0f}  RSS {s['rss_mb']:6.1f} MB  fds {s['fds']:3.0f}  "
                  f"threads {s['threads']:3.0f}", flush=True)

    def finish() -> None:
        samples.append(take())  # the last sample while running
        done.set()
        station.runtime.request_stop()

    samples.append(take())
    timer = threading.Timer(minutes * 60.0, finish)
    timer.daemon = True
    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    timer.start()
    summary = station.run()
    done.set()
    watcher.join(5)
    closed = sample()  # after the station closed: its threads and files are gone again
    warm = min(60.0, minutes * 6.0)
    base = next((s for s in samples if s["t_s"] >= warm), samples[0])
    after = [s for s in samples if s["t_s"] >= base["t_s"]]
    end = samples[-1]
    return {
        "minutes": minutes, "fps_asked": fps, "decided": summary.decided, "recorded": summary.recorded,
        "dropped": summary.dropped, "fps": summary.decided / max(1e-9, summary.duration_s),
        "rss_start_mb": samples[0]["rss_mb"], "rss_base_mb": base["rss_mb"], "rss_end_mb": end["rss_mb"],
        "rss_max_mb": max(s["rss_mb"] for s in samples), "growth_mb": end["rss_mb"] - base["rss_mb"],
        "fds": _spread([s["fds"] for s in after]), "threads": _spread([s["threads"] for s in after]),
        "closed": closed, "base_t_s": base["t_s"], "samples": samples, "ended": summary.ended,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--bundle", type=Path, help="bundle to run (default: the toy bundle of the tests)")
    ap.add_argument("--json", type=Path, help="also write every sample to this JSON file")
    ap.add_argument("--no-write", action="store_true", help="print only, do not touch docs/benchmarks.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # the station's own process: edge imports only
    args = ap.parse_args()
    if args.child:
        c = json.loads(args.child)
        r = soak(Path(c["bundle"]), Path(c["video"]), Path(c["workdir"]), c["minutes"], c["fps"], c["sample_s"])
        print("SOAK " + json.dumps(r), flush=True)
        return 0

    from lineguard import synth

    with tempfile.TemporaryDirectory(prefix="lineguard-soak-") as tmp_s:
        tmp = Path(tmp_s)
        video, _ = synth.write_video(str(tmp / "line.avi"), cones=30)
        bundle = args.bundle
        if bundle is None:
            sys.path.insert(0, str(REPO))
            from tests.unit._edge_bundles import make_toy_bundle

            bundle = make_toy_bundle(tmp / "toy")
        # The station runs in a process of its own, without the training stack this one imported to build
        # the video and the bundle, so its memory is the station's.
        child = json.dumps({"bundle": str(bundle), "video": str(video), "workdir": str(tmp), "minutes": args.minutes,
                            "fps": args.fps, "sample_s": args.sample_s})
        env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        proc = subprocess.Popen([sys.executable, __file__, "--child", child], stdout=subprocess.PIPE, text=True,
                                env=env)
        result = None
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("SOAK "):
                result = json.loads(line[5:])
            else:
                print(line, end="", flush=True)
        if proc.wait() != 0 or result is None:
            print(f"the soak process failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        r = result
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))
    def spread(x: dict[str, Any]) -> str:
        rng = f"{x['min']}" if x["min"] == x["max"] else f"{x['min']}-{x['max']}"
        return f"{rng} (last {x['last']}) {'✅' if x['flat'] else '❌'}"

    ok = "✅" if r["growth_mb"] <= R9_GROWTH_MB else "❌"
    body = "\n".join([
        f"TARGETS R9: a {args.minutes:g}-minute run at {args.fps:g} frames/s (a looping synthetic conveyor video read "
        "at that rate), the station as `lineguard edge run` builds it (store with default sampling, a JSON-lines "
        f"sink through the outbox); memory growth <= {R9_GROWTH_MB:.0f} MB after the warm-up, file handles and "
        f"threads flat (no higher in the second half of the run than in the first). Sampled every {args.sample_s:g} s; "
        f"growth from the sample at {r['base_t_s']:.0f} s to the last one before stopping.",
        "",
        "| minutes | frames decided | frames/s | dropped | RSS start / after warm-up / end / max MB | growth MB | "
        "open fds after warm-up | threads after warm-up |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {args.minutes:g} | {r['decided']} | {r['fps']:.1f} | {r['dropped']} | {r['rss_start_mb']:.1f} / "
        f"{r['rss_base_mb']:.1f} / {r['rss_end_mb']:.1f} / {r['rss_max_mb']:.1f} | {r['growth_mb']:+.1f} {ok} | "
        f"{spread(r['fds'])} | {spread(r['threads'])} |",
        "",
        f"After the station closed: {r['closed']['fds']:.0f} open fds, {r['closed']['threads']:.0f} threads "
        f"(RSS {r['closed']['rss_mb']:.1f} MB). The station ran in a process of its own (edge imports only); "
        f"{r['recorded']} decisions recorded, ended: {r['ended']}.",
        "",
        load_note(),
    ])
    print(body)
    if not args.no_write:
        write_section("Soak (R9)", body, "python benchmarks/soak.py" + args_for_docs(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
