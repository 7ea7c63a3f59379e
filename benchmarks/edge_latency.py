"""TARGETS P1: edge inference latency of the default bundle, ONNX Runtime, batch 1, 1 thread.

Usage:
    .venv/bin/python benchmarks/edge_latency.py                    # default model(s), random weights
    .venv/bin/python benchmarks/edge_latency.py --bundle BUNDLE    # an exported bundle
    .venv/bin/python benchmarks/edge_latency.py --rounds 5 --repeats 1000

Latency depends on the architecture and input size, not on the weights, so without
``--bundle`` the default model of the config (``train.model`` at ``preprocess.size``)
is exported with random weights into a throw-away bundle; ``tinycnn`` is measured
beside it for comparison. Each round runs ``python -m lineguard.edge.bench`` in a fresh
process (warm-up, then ``--repeats`` timed calls); the table gives the median over
rounds of each round's median and p99, preprocessing excluded (model + decision) and
included (a decoded frame the size of the model input -> decision, as on the toy
data). Writes the ``## Edge latency`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write_section

P1_MEDIAN_MS, P1_P99_MS = 0.5, 1.0


def _random_bundle(name: str, out: Path) -> Path:
    """Export ``name`` with random weights at the configured input size into a bundle."""
    from lineguard import export as ex
    from lineguard.config import load_config
    from lineguard.edge import Decision
    from lineguard.models import create_model
    from lineguard.preprocess import PreprocessParams

    cfg = load_config(None)
    params = PreprocessParams.from_dict(cfg.preprocess.model_dump())
    model = create_model(name, 2, cfg.train.width if name == cfg.train.model else 1.0).eval()
    golden = ex.synthetic_golden(params, 8)
    result = ex.export_onnx(model, params, out.with_suffix(".onnx"), golden=golden)
    return ex.write_bundle(out, result.path, classes=["good", "bad"], positive_class="bad", preprocess=params,
                           golden=golden, expected=result.expected, parity=result.parity,
                           decision=Decision(0.5), precision="fp32", opset=18, name=name,
                           version="random-weights")


def measure(bundle: Path, rounds: int, repeats: int, warmup: int, threads: int) -> dict[str, float]:
    from lineguard.edge.bench import bench_in_subprocess

    runs = []
    for i in range(rounds):
        r = bench_in_subprocess(bundle, threads=threads, repeats=repeats, warmup=warmup,
                                frame_size=_input_size(bundle))
        runs.append(r)
        print(f"  round {i + 1}/{rounds}: model median {r['model']['median_ms']:.3f} ms p99 "
              f"{r['model']['p99_ms']:.3f} ms | end-to-end median {r['end_to_end']['median_ms']:.3f} ms", flush=True)

    def med(key: str, stat: str) -> float:
        return statistics.median(r[key][stat] for r in runs)

    return {
        "model_median": med("model", "median_ms"), "model_p99": med("model", "p99_ms"),
        "e2e_median": med("end_to_end", "median_ms"), "e2e_p99": med("end_to_end", "p99_ms"),
        "pre_median": med("preprocess", "median_ms"), "throughput": med("model", "throughput_per_s"),
        "size_mb": bundle_size_mb(bundle),
    }


def _input_size(bundle: Path) -> tuple[int, int]:
    from lineguard.edge import load_bundle

    h, w = load_bundle(bundle, check_model=False).preprocess.size
    return h, w


def bundle_size_mb(bundle: Path) -> float:
    from lineguard.edge import load_bundle

    return load_bundle(bundle, check_model=False).size_bytes / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, action="append", help="bundle(s) to measure (default: random-weight models)")
    ap.add_argument("--models", default="", help="comma-separated models to export when no --bundle "
                    "(default: the config's train.model, then tinycnn)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="print only, do not touch docs/benchmarks.md")
    args = ap.parse_args()

    from lineguard.config import load_config

    cfg = load_config(None)
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="lineguard-bench-") as tmp:
        targets: list[tuple[str, Path]] = []
        if args.bundle:
            targets = [(str(b), b) for b in args.bundle]
        else:
            names = [n for n in args.models.split(",") if n] or list(dict.fromkeys([cfg.train.model, "tinycnn"]))
            for name in names:
                print(f"exporting {name} (random weights) at {cfg.preprocess.size[0]}x{cfg.preprocess.size[1]}",
                      flush=True)
                label = f"{name} (default model)" if name == cfg.train.model else name
                targets.append((label, _random_bundle(name, Path(tmp) / name)))
        for label, bundle in targets:
            print(f"measuring {label}", flush=True)
            rows.append((label, measure(bundle, args.rounds, args.repeats, args.warmup, args.threads)))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    def mark(value: float, target: float) -> str:
        return f"{value:.3f} {'✅' if value <= target else '❌'}"

    lines = [
        f"TARGETS P1: median ≤ {P1_MEDIAN_MS} ms and p99 ≤ {P1_P99_MS} ms, ONNX Runtime, batch 1, "
        f"{args.threads} thread, input {cfg.preprocess.size[0]}x{cfg.preprocess.size[1]}. Median over "
        f"{args.rounds} fresh-process rounds of {args.repeats} timed calls each ({args.warmup} warm-up).",
        "",
        "| bundle | model median ms | model p99 ms | with preprocessing: median ms | p99 ms | "
        "preprocessing alone ms | images/s (model) | bundle MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in rows:
        lines.append(
            f"| {label} | {mark(r['model_median'], P1_MEDIAN_MS)} | {mark(r['model_p99'], P1_P99_MS)} | "
            f"{r['e2e_median']:.3f} | {r['e2e_p99']:.3f} | {r['pre_median']:.3f} | {r['throughput']:.0f} | "
            f"{r['size_mb']:.2f} |"
        )
    lines += [
        "",
        "\"model\" = ONNX Runtime session run + calibrated decision on an already preprocessed 1x3xHxW tensor "
        "(the P1 figure); \"with preprocessing\" adds LineGuard's numpy/Pillow preprocessing of a decoded RGB "
        "frame of the input size. The ✅/❌ marks compare with P1 as measured here; p99 is sensitive to other "
        "load on a shared machine.",
        "",
        f"1-minute load average when the measurement ended: {load:.1f} on {os.cpu_count()} cores"
        + (" -- a loaded machine: re-run on a quiet one for P1." if load > (os.cpu_count() or 1) else "."),
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        cmd = "python benchmarks/edge_latency.py " + " ".join(sys.argv[1:])
        write_section("Edge latency", body, cmd.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
