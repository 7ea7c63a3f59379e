"""The edge store's write cost: what recording one decision adds to a frame (TARGETS P2's budget).

Usage: .venv/bin/python benchmarks/store.py [--records 3000] [--rounds 5]

Each round writes ``--records`` decisions into a fresh store (in the system temp folder,
the same disk as a real store would use here) and reports the median cost per record in
microseconds for: ``record()`` with no sink, with two sinks (two outbox rows in the same
transaction), with ``synchronous=FULL`` (one fsync per commit), with a sampled 24x24 PNG,
and ``record_many()`` in groups of 16 with two sinks (one commit per group). Then the
time to reopen a store of 100,000 records (what a restart after ``kill -9`` waits for).
Writes the ``## Edge store writes`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import load_note, write_section

from lineguard.edge.store import PredictionRecord, Store


def make_record(i: int, decision: str = "accept", score: float = 0.05) -> PredictionRecord:
    return PredictionRecord(frame_id=f"b-{i}", time=time.time(), station="bench", source="video:/v.mp4#" + str(i),
                            recipe="vanilla", label="bad" if decision == "reject" else "good", score=score,
                            decision=decision, threshold=0.5, bundle_name="toy", bundle_version="1.0.0",
                            latency_ms=1.5, stats={"mean": 0.25, "std": 0.1})


def png(seed: int, size: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _round(kind: str, n: int, folder: Path) -> float:
    """Microseconds per record for one way of writing ``n`` records."""
    path = folder / f"{kind}-{time.monotonic_ns()}.db"
    store = Store(path, synchronous="FULL" if kind == "full" else "NORMAL")
    image = png(1, size=24)
    recs = [make_record(i, decision="reject" if kind == "image" else "accept",
                        score=0.9 if kind == "image" else 0.05) for i in range(n)]
    sinks = ("mqtt", "webhook") if kind in ("sinks", "many") else ()
    t0 = time.perf_counter()
    if kind == "many":
        for i in range(0, n, 16):
            store.record_many([(r, None) for r in recs[i:i + 16]], sinks=sinks)
    else:
        for r in recs:
            store.record(r, image if kind == "image" else None, sinks=sinks)
    elapsed = time.perf_counter() - t0
    store.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{path}{suffix}"):
            os.unlink(f"{path}{suffix}")
    return elapsed / n * 1e6


def _reopen_ms(folder: Path, rows: int, rounds: int) -> float:
    path = folder / "big.db"
    store = Store(path)
    for i in range(0, rows, 500):
        store.record_many([(make_record(j), None) for j in range(i, i + 500)], sinks=("mqtt",))
    store.close()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        Store(path).close()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    labels = {
        "plain": "record(), no sink",
        "sinks": "record(), 2 sinks (2 outbox rows)",
        "image": "record(), reject with a sampled PNG",
        "full": "record(), synchronous=FULL (fsync per commit)",
        "many": "record_many() in groups of 16, 2 sinks",
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="lg-store-bench-") as tmp:
        folder = Path(tmp)
        for kind, label in labels.items():
            n = args.records if kind != "full" else max(200, args.records // 10)
            us = [_round(kind, n, folder) for _ in range(args.rounds)]
            med = statistics.median(us)
            rows.append(f"| {label} | {n} | {med:.0f} | {1e6 / med:,.0f} |")
            print(rows[-1], flush=True)
        reopen = _reopen_ms(folder, 100_000, args.rounds)
    body = (
        f"Median of {args.rounds} rounds, each a fresh store in the temp folder (ext4 on a virtual disk).\n\n"
        "| write | records per round | µs per record | records/s |\n| --- | --- | --- | --- |\n"
        + "\n".join(rows)
        + f"\n\nReopening a store of 100,000 records with 100,000 pending outbox rows (the restart after a kill): "
        f"median {reopen:.0f} ms. {load_note()}\n"
    )
    write_section("Edge store writes", body, " ".join(["python benchmarks/store.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
