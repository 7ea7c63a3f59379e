"""Benchmark: evaluation cost, and (with --run/--data) the Q1 quality figures of a trained run.

1. Speed of the pure evaluation core (``evaluate_predictions``: temperature, per-recipe
   thresholds, every metric with 1,000 bootstrap resamples overall, per recipe and per
   defect) on synthetic scores for 150, 1,500 and 15,000 test images, median of 3 runs.
2. With ``--run RUN_ID --data DATASET``: evaluates that run (no report, no MLflow) and
   records balanced accuracy overall and per recipe and the calibrated ECE against Q1
   (>= 99.5 % overall, >= 99 % every recipe, ECE <= 0.02).

Writes the ``## Evaluate`` section of docs/benchmarks.md.

Usage: .venv/bin/python benchmarks/evaluate.py [--repeats 3] [--run RUN_ID --data DATASET [--workdir DIR]]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import median, write_section

from lineguard.config import EvaluateConfig, load_config
from lineguard.evaluate import Predictions, evaluate, evaluate_predictions


def _fake(n: int, seed: int) -> Predictions:
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n // 2), np.ones(n - n // 2)].astype(np.int64)
    margins = (2 * labels - 1) * 4.0 + rng.normal(0, 2.0, n)
    recipes = np.array([f"recipe_{i % 5}" for i in range(n)])
    kinds = np.where(labels == 1, np.array(["missing", "partial"])[rng.integers(0, 2, n)], "")
    ids = np.array([f"img{i}" for i in range(n)])
    return Predictions(ids, ids, labels, recipes, kinds, margins)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run", help="a training run id to measure against Q1")
    parser.add_argument("--data", help="the dataset of --run")
    parser.add_argument("--workdir", default="lineguard-work", help="where the run's MLflow store lives")
    args = parser.parse_args()
    cfg = EvaluateConfig()
    rows = ["| test images | bootstrap resamples | median seconds |", "|---|---|---|"]
    for n in (150, 1500, 15000):
        val, test = _fake(n, 0), _fake(n, 1)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            evaluate_predictions(val, test, cfg)
            times.append(time.perf_counter() - start)
        rows.append(f"| {n:,} | {cfg.bootstrap} | {median(times):.2f} |")
    body = "Pure evaluation core (`evaluate_predictions`), synthetic scores, 5 recipes:\n\n" + "\n".join(rows)
    command = "python benchmarks/evaluate.py"
    if args.run and args.data:
        config = load_config(None, [f"workdir={args.workdir}"])
        start = time.perf_counter()
        result = evaluate(args.run, args.data, config, log=False, report=False, behaviour=False)
        seconds = time.perf_counter() - start
        ba = result.balanced_accuracy or 0.0
        per = result.per_recipe_balanced_accuracy()
        worst = min((v for v in per.values() if v is not None), default=0.0)
        ece = result.ece if result.ece is not None else float("nan")
        ok = ba >= 0.995 and worst >= 0.99 and ece <= 0.02
        ci = result.metrics["overall"].get("ci", {}).get("balanced_accuracy") or [None, None]
        lines = [
            "", f"Q1 on run `{args.run}`, dataset version `{result.dataset_version}` ({seconds:.0f} s to evaluate):", "",
            "| figure | value | target |", "|---|---|---|",
            f"| balanced accuracy, test | {100 * ba:.2f} % (95 % CI {ci[0] and 100 * ci[0]:.2f}–"
            f"{ci[1] and 100 * ci[1]:.2f}) | ≥ 99.5 % |",
            *[f"| balanced accuracy, {r} | {'–' if v is None else f'{100 * v:.2f} %'} | ≥ 99 % |"
              for r, v in per.items()],
            f"| ECE after temperature scaling (T = {result.decision.temperature:.2f}) | {ece:.4f} "
            f"(before: {result.metrics['uncalibrated']['ece']:.4f}) | ≤ 0.02 |",
            "", f"Q1 {'met' if ok else 'NOT met'}.",
        ]
        body += "\n" + "\n".join(lines)
        command += f" --run {args.run} --data {args.data} --workdir {args.workdir}"
    print(body)
    write_section("Evaluate", body, command)


if __name__ == "__main__":
    main()
