"""New-recipe onboarding (TARGETS Q3): 30 labelled images of an unseen recipe, fine-tuned from
the current model vs trained from scratch. Writes the ``## Onboarding`` section of docs/benchmarks.md.

    python benchmarks/onboard.py                 # about 4 minutes on 2 cores
    python benchmarks/onboard.py --images 30 --seeds 3

The champion is the default recipe trained on the default toy dataset (the first five
recipes). The new recipe is the sixth (``pistachio_coconut``), never seen in training:
``--images`` labelled images (half good, half bad) are ingested as a dataset of their own
(70 % train, 30 % val), then

- fine-tuned: ``lineguard train --data NEW --init-from RUN`` with the onboarding settings of
  docs/training.md (``--finetune``, default ``train.backbone_lr_scale=0.5 train.epochs=30``),
  rehearsing ``train.rehearsal`` old images per class from the champion's dataset, and
- from scratch: ``lineguard train --data NEW`` with the default recipe.

Both are scored on 200 held-out images of the new recipe (another synth seed) and on the
old recipes' test split (to show what fine-tuning kept). Balanced accuracy at the 0.5
threshold, as the model outputs it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _report import balanced_accuracy_on, load_note, write_section

NEW_RECIPE_INDEX = 5  # synth.RECIPE_IDS[5]: the first recipe outside the default five


def _new_recipe(work: Path, name: str, per_class: int, seed: int, split: dict[str, float]) -> str:
    """Synth ``per_class`` good and bad images of the new recipe alone and ingest them."""
    from lineguard.config import IngestConfig, SynthConfig
    from lineguard.ingest import ingest
    from lineguard.synth import RECIPE_IDS, synth

    recipe = RECIPE_IDS[NEW_RECIPE_INDEX]
    raw = work / f"{name}-raw"
    synth(str(raw), SynthConfig(recipes=NEW_RECIPE_INDEX + 1, per_class=per_class, seed=seed))
    src = work / f"{name}-src"
    shutil.copytree(raw / recipe, src / recipe)
    out = work / name
    ingest(str(src), str(out), IngestConfig(split=split))
    return str(out)


def _balanced_accuracy(source: str, data: str, splits: tuple[str, ...], config: object) -> float:
    from lineguard.evaluate.scoring import load_scorer
    from lineguard.manifest import load_dataset

    scorer, _ = load_scorer(source, config)  # type: ignore[arg-type]
    return balanced_accuracy_on(scorer, load_dataset(data), splits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30, help="labelled images of the new recipe (half bad)")
    parser.add_argument("--seeds", type=int, default=3, help="new-recipe samples (median reported)")
    parser.add_argument("--finetune", default="train.backbone_lr_scale=0.5 train.epochs=30",
                        help="the fine-tuning overrides (space-separated), after train.init_from=CHAMPION")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from rich.console import Console

    from lineguard.config import SynthConfig, load_config
    from lineguard.ingest import ingest
    from lineguard.manifest import load_dataset
    from lineguard.synth import RECIPE_IDS, synth
    from lineguard.train import train

    quiet = Console(quiet=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lg-bench-onboard-") as tmp:
        work = Path(tmp)
        synth(str(work / "toy-raw"), SynthConfig())
        ingest(str(work / "toy-raw"), str(work / "toy"))
        base = load_config(None, [f"workdir={work / 'lg'}"])
        t0 = time.perf_counter()
        champion = train(base, load_dataset(str(work / "toy")), progress=False, console=quiet)
        champion_s = time.perf_counter() - t0
        assert champion.run_id is not None
        held_out = _new_recipe(work, "new-test", 100, seed=1000, split={"train": 0.5, "val": 0.0, "test": 0.5})
        champion_new = _balanced_accuracy(champion.run_id, held_out, ("train", "test"), base)
        champion_old = _balanced_accuracy(champion.run_id, str(work / "toy"), ("test",), base)
        print(f"champion {champion.run_id}: old recipes {champion_old:.4f}, new recipe (never seen) "
              f"{champion_new:.4f}", flush=True)
        for seed in range(args.seeds):
            new = _new_recipe(work, f"new-{seed}", args.images // 2, seed=100 + seed,
                              split={"train": 0.7, "val": 0.3, "test": 0.0})
            new_ds = load_dataset(new)
            row: dict[str, float] = {"seed": float(seed), "images": float(len(new_ds.manifest))}
            for kind, extra in (("fine-tuned", [f"train.init_from={champion.run_id}", *args.finetune.split()]),
                                ("scratch", [])):
                cfg = load_config(None, [f"workdir={work / 'lg'}", *extra])
                t0 = time.perf_counter()
                result = train(cfg, new_ds, progress=False, console=quiet)
                row[f"{kind} s"] = time.perf_counter() - t0
                assert result.run_id is not None
                row[f"{kind} new"] = _balanced_accuracy(result.run_id, held_out, ("train", "test"), cfg)
                row[f"{kind} old"] = _balanced_accuracy(result.run_id, str(work / "toy"), ("test",), cfg)
            rows.append(row)
            print(f"seed {seed}: {row}", flush=True)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    ft, sc = med("fine-tuned new"), med("scratch new")
    recipe = RECIPE_IDS[NEW_RECIPE_INDEX]
    lines = [
        load_note(),
        "",
        f"New recipe `{recipe}` (never in the champion's data), {args.images} labelled images "
        f"({int(med('images'))} after ingest: 70 % train, 30 % val), {len(rows)} samples of them; scored on "
        f"200 held-out images of the new recipe and on the old recipes' test split. Champion: the default "
        f"recipe on the default toy dataset ({champion_s:.0f} s); it scores {100 * champion_new:.1f} % on the "
        f"new recipe before onboarding and {100 * champion_old:.1f} % on the old ones.",
        "",
        "| | new recipe bal. acc | old recipes bal. acc | wall s |",
        "| --- | --- | --- | --- |",
        f"| fine-tuned from the champion (`--init-from RUN`, rehearsal, `{args.finetune}`) | "
        f"{100 * ft:.1f} % {'✅' if ft >= 0.97 else '❌'} | {100 * med('fine-tuned old'):.1f} % | "
        f"{med('fine-tuned s'):.0f} |",
        f"| from scratch, default recipe | {100 * sc:.1f} % | {100 * med('scratch old'):.1f} % | "
        f"{med('scratch s'):.0f} |",
        "",
        f"Q3 (≥ 97 % on the new recipe and better than from scratch): "
        f"{'met ✅' if ft >= 0.97 and ft > sc else 'not met ❌'}. Medians over the samples; per sample: "
        + "; ".join(f"fine-tuned {100 * r['fine-tuned new']:.1f} % vs scratch {100 * r['scratch new']:.1f} %"
                    for r in rows) + ".",
    ]
    write_section("Onboarding a new recipe", "\n".join(lines),
                  f"python benchmarks/onboard.py {' '.join(sys.argv[1:])}".strip())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
