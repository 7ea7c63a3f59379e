"""Training-recipe sweep: test balanced accuracy and wall time of train() for a few override sets.

Usage: .venv/bin/python benchmarks/train_sweep.py DATASET [--set "train.width=1.5 augment.strength=1"]...
Each --set is one variant (space-separated overrides); with none, the variants below run.
Writes `## Training recipe sweep` in docs/benchmarks.md. Run variants one at a time on a quiet machine.
"""

from __future__ import annotations

import argparse
import time

from _report import write_section

from lineguard.config import load_config
from lineguard.manifest import load_dataset
from lineguard.train import train

VARIANTS = [
    "train.epochs=30",
    "train.epochs=30 train.width=1.5 train.threads=1",
    "train.epochs=30 augment.strength=0 train.threads=1",
    "train.epochs=40 augment.strength=1.0 train.threads=1",
    "train.epochs=30 train.model=mobilenetv3_small train.width=0.5 train.threads=1",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--set", dest="variants", action="append", default=[])
    parser.add_argument("--workdir", default="/tmp/lineguard-sweep")
    args = parser.parse_args()
    ds = load_dataset(args.dataset)
    rows = ["| overrides | best epoch | val bal. acc | test bal. acc | wall s |", "| --- | --- | --- | --- | --- |"]
    for variant in args.variants or VARIANTS:
        cfg = load_config(None, [f"workdir={args.workdir}", *variant.split()])
        t0 = time.perf_counter()
        r = train(cfg, ds, track=False, progress=False)
        rows.append(f"| `{variant}` | {r.best_epoch} | {r.val_metrics['balanced_accuracy']:.4f} | "
                    f"{r.test_metrics['balanced_accuracy']:.4f} | {time.perf_counter() - t0:.0f} |")
        print(rows[-1], flush=True)
    write_section("Training recipe sweep", f"Dataset {args.dataset} (version {ds.version}).\n\n" + "\n".join(rows),
                  "python benchmarks/train_sweep.py DATASET")


if __name__ == "__main__":
    main()
