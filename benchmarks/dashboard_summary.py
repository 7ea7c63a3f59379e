"""What the dashboard costs the station: ``GET /v1/summary`` over a real store.

Usage:
    .venv/bin/python benchmarks/dashboard_summary.py                 # 50,000 decisions, 5 repeats
    .venv/bin/python benchmarks/dashboard_summary.py --rows 200000 --repeats 3

Fills a real SQLite store (lineguard.edge.store) with ``--rows`` decisions of two recipes, each with
the monitor's nine image signals as its stats, and 300 feedback labels, then times
:class:`lineguard.edge.summary.DashboardSummary` as the API runs it: the first answer (reads the
whole day back), an answer after 60 new decisions (2 s of a 30 fps line: what each poll pays), and
an answer when nothing changed (what most polls pay; the API then answers 304). Medians of
``--repeats`` fresh summaries. Writes the ``## Dashboard summary`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import load_note, write_section


class _Station:
    def __init__(self, store: Any, slot: Any) -> None:
        self.name, self.store, self.slot = "bench", store, slot
        self.runtime = type("R", (), {"recipe": "vanilla"})()
        self.monitor = None


def _records(n: int, start: int, t0: float, rng: np.random.Generator) -> list[Any]:
    from lineguard.edge.store import PredictionRecord
    from lineguard.monitor import IMAGE_SIGNALS

    out = []
    for i in range(start, start + n):
        score = float(rng.beta(1, 6))
        stats = {name: float(rng.normal(100, 10)) for name in IMAGE_SIGNALS}
        out.append(PredictionRecord(f"b-{i}", t0 + i / 30.0, "bench", "video:/x.mp4", ("vanilla", "chocolate")[i % 2],
                                    "bad" if score >= 0.5 else "good", score, "reject" if score >= 0.5 else "accept",
                                    0.5, "toy", "1", 3.0, stats))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()

    from tests.unit._edge_bundles import make_toy_bundle

    from lineguard.edge.hotswap import ModelSlot
    from lineguard.edge.store import Store
    from lineguard.edge.summary import DashboardSummary

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        slot = ModelSlot.open(make_toy_bundle(Path(tmp) / "toy"))
        store = Store(Path(tmp) / "edge.db", min_free_bytes=0)
        t0 = time.time() - args.rows / 30.0 - 60
        for start in range(0, args.rows, 5000):
            store.record_many([(r, None) for r in _records(min(5000, args.rows - start), start, t0, rng)])
        for pid in range(1, 301):
            store.add_feedback(pid * (args.rows // 301), "bad" if pid % 7 == 0 else "good")
        station = _Station(store, slot)
        first, new, same = [], [], []
        seq = args.rows
        for _ in range(args.repeats):
            summary = DashboardSummary(station)
            t = time.perf_counter()
            polls = 0
            while not summary.snapshot()["complete"]:
                polls += 1
            first.append(time.perf_counter() - t)
            for _ in range(5):
                store.record_many([(r, None) for r in _records(60, seq, t0, rng)])
                seq += 60
                t = time.perf_counter()
                summary.snapshot()
                new.append(time.perf_counter() - t)
                t = time.perf_counter()
                summary.snapshot()
                same.append(time.perf_counter() - t)
        store.close()
    med = statistics.median
    body = (f"A store of {args.rows:,} decisions (nine image signals each) and 300 feedback labels; medians of "
            f"{args.repeats} fresh summaries (5 polls each for the incremental cases).\n\n"
            "| answer | median |\n|---|---|\n"
            f"| catching up: reading the whole store back, {summary.max_rows:,} rows per poll "
            f"({polls + 1} polls) | {1000 * med(first):.0f} ms in all, {args.rows / med(first):,.0f} rows/s |\n"
            f"| after 60 new decisions (one 2 s poll of a 30 fps line) | {1000 * med(new):.1f} ms |\n"
            f"| nothing changed (the API answers 304) | {1000 * med(same):.2f} ms |\n\n"
            f"{load_note()}\n")
    print(body)
    if not args.no_write:
        write_section("Dashboard summary", body, f"python benchmarks/dashboard_summary.py --rows {args.rows} "
                      f"--repeats {args.repeats}")


if __name__ == "__main__":
    main()
