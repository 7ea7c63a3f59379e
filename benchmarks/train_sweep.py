"""Training-recipe sweep: balanced accuracy and wall time of train() for a few override sets.

Usage: .venv/bin/python benchmarks/train_sweep.py DATASET [--held-out DATASET2] [--set "train.epochs=28"]...

Each --set is one variant (space-separated overrides); with none, the variants below run.
``--held-out`` scores every model also on all images of a second dataset (e.g. the toy set drawn
with another seed: ``lineguard data synth big --set synth.seed=7 --set synth.per_class=200``):
the 450-image test split of the default toy set moves by +-1 point between seeds and thread
counts, so compare recipes on the held-out figure, and on more than one ``train.seed``.
Writes `## Training recipe sweep` in docs/benchmarks.md. Run variants one at a time on a quiet machine.
"""

from __future__ import annotations

import argparse
import time

from _report import balanced_accuracy_on, write_section

from lineguard.config import load_config
from lineguard.manifest import Dataset, load_dataset
from lineguard.train import TrainResult, train

VARIANTS = [
    "",
    "train.epochs=28",
    "train.recipe_head=false",
    "train.seed=1",
    "train.seed=1 train.recipe_head=false",
]


def held_out_balanced_accuracy(result: TrainResult, ds: Dataset) -> float:
    """Balanced accuracy at the 0.5 point on every image of ``ds`` (all splits)."""
    from lineguard.evaluate.scoring import TorchScorer

    scorer = TorchScorer("sweep", result.model.eval(), tuple(result.classes), ds.positive_class, result.preprocess)
    return balanced_accuracy_on(scorer, ds, ("train", "val", "test"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--held-out", help="a second dataset scored on all its images")
    parser.add_argument("--set", dest="variants", action="append", default=[])
    parser.add_argument("--workdir", default="/tmp/lineguard-sweep")
    args = parser.parse_args()
    ds = load_dataset(args.dataset)
    held = load_dataset(args.held_out) if args.held_out else None
    rows = ["| overrides | best epoch | val bal. acc | test bal. acc | held-out bal. acc | wall s |",
            "| --- | --- | --- | --- | --- | --- |"]
    for variant in args.variants or VARIANTS:
        cfg = load_config(None, [f"workdir={args.workdir}", *variant.split()])
        t0 = time.perf_counter()
        r = train(cfg, ds, track=False, progress=False)
        wall = time.perf_counter() - t0
        held_acc = f"{held_out_balanced_accuracy(r, held):.4f}" if held is not None else "–"
        rows.append(f"| `{variant or '(defaults)'}` | {r.best_epoch} | {r.val_metrics['balanced_accuracy']:.4f} | "
                    f"{r.test_metrics['balanced_accuracy']:.4f} | {held_acc} | {wall:.0f} |")
        print(rows[-1], flush=True)
    what = f"Dataset {args.dataset} (version {ds.version})" + (
        f"; held-out {args.held_out} (version {held.version}, {len(held.manifest)} images)" if held else "")
    write_section("Training recipe sweep", what + ".\n\n" + "\n".join(rows),
                  "python benchmarks/train_sweep.py DATASET" + (" --held-out HELD_OUT" if held else ""))


if __name__ == "__main__":
    main()
