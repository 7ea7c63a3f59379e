"""Benchmark: how fast ``synth`` draws the toy dataset (target: 1,000 images at 128x128 in < 30 s on 2 cores).

Times the whole ``synth`` call (drawing, encoding, writing, the ground truth) for 1,000 images
(5 recipes x 2 classes x 100), clean layout, then the messy layout and one video, each the median
of 3 runs; writes the ``## Synth`` section of docs/benchmarks.md.

Usage: .venv/bin/python benchmarks/synth.py [--repeats 3] [--workers 0]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import median, write_section

from lineguard.config import SynthConfig
from lineguard.synth import default_workers, synth, write_video


def _cpu_s() -> float:
    """CPU seconds used so far by this process and its finished worker processes."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _time(fn: object, repeats: int, cpu: list[float] | None = None) -> list[float]:
    """Wall seconds of each run; CPU seconds of each run appended to ``cpu``."""
    times = []
    for _ in range(repeats):
        start, cpu0 = time.perf_counter(), _cpu_s()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(_cpu_s() - cpu0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="0 = the usable cores, at most 4")
    parser.add_argument("--single", action="store_true", help="also time one worker (the scaling)")
    args = parser.parse_args()
    workers = args.workers or default_workers()
    cfg = SynthConfig(recipes=5, per_class=100, size=128, seed=0)
    n = 5 * 2 * 100
    tmp = Path(tempfile.mkdtemp(prefix="lineguard-bench-synth-"))
    load_before = os.getloadavg()[0]
    rows = []
    try:
        cases = [("clean", False, workers), ("messy", True, workers)]
        if args.single:
            cases.insert(1, ("clean", False, 1))
        for layout, messy, w in cases:
            def run(messy: bool = messy, w: int = w) -> None:
                out = tmp / "ds"
                synth(str(out), cfg, messy=messy, workers=w)
                shutil.rmtree(out)

            cpu: list[float] = []
            times = _time(run, args.repeats, cpu)
            med, cpu_ms = median(times), 1000 * median(cpu) / n
            rows.append(f"| {layout} | {w} | {n} | {med:.1f} | {n / med:.0f} | {cpu_ms:.0f} | "
                        f"{n * cpu_ms / 1000 / 2:.1f} | {', '.join(f'{t:.1f}' for t in times)} |")
            print(rows[-1], flush=True)
        vcfg = cfg.model_copy(update={"video_frames_per_cone": 10})
        vtimes = _time(lambda: write_video(str(tmp / "line.avi"), vcfg, cones=30), args.repeats)
        vmed = median(vtimes)
        print(f"video: 300 frames in {vmed:.1f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load = f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    body = (
        f"Target: 1,000 images at 128x128 in under 30 s on 2 cores. During the run: {load}.\n\n"
        "| layout | workers | images | median s | images/s | CPU ms/image | s on 2 idle cores (CPU/2) | runs (s) |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
        + "\n".join(rows)
        + f"\n\nVideo (`write_video`, 30 cones, 300 frames of 128x128 MJPG): median {vmed:.1f} s "
        f"({300 / vmed:.0f} frames/s).\n\n"
        "On a busy machine the wall time mostly measures the other load; CPU ms/image (drawing, encoding and "
        "writing, workers included) divided over 2 cores is what an idle 2-core machine would take.\n"
    )
    write_section("Synth", body, "python benchmarks/synth.py")


if __name__ == "__main__":
    main()
