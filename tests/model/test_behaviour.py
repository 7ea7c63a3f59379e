"""Behaviour of a trained model on the toy cones: invariance, direction, minimum function.

A small model is trained once (module fixture, ``train.train`` untracked) on a tiny toy
dataset drawn with :func:`lineguard.synth.draw_cone`: two recipes, good cones and cones
with the topping missing. The checks are the ones a reviewer would do by hand:

- invariance: a few percent of brightness or a 1-pixel shift do not flip decisions;
- direction: the same cone drawn without its topping scores as *more* defective;
- minimum function: every recipe is clearly better than chance on held-out cones.

Limits are looser than the release gate's because the model is tiny and trained briefly;
they still fail for a model that ignores the topping or keys on lighting. The model is trained
with the shifts and brightness changes it is checked on (augment.strength 0.6: about +-2.5 px and
+-12 %), as a real line needs anyway, so the checks hold with margin on any machine (R12): training
is deterministic per machine only, and another CPU's kernels give another model -- with
augmentation 0.2 a 2-core machine elsewhere flipped 5 of 32 decisions on a 1-pixel shift; with 0.6,
at 1 and at 2 threads here, none of 32 flips and every recipe is at 100 %.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

RECIPES = ("vanilla_sprinkles", "mint_chips")
SIZE = 64
PER_CLASS = 40


def _draw(recipe: str, label: str, index: int, seed: int = 7) -> np.ndarray:
    from lineguard.synth import draw_cone

    rng = np.random.default_rng([seed, index, RECIPES.index(recipe)])
    return draw_cone(rng, recipe, label, "" if label == "good" else "missing_topping", size=SIZE, difficulty=0.0)


def _dataset(out: Path) -> Any:
    from lineguard.manifest import encode_png, image_id_of, image_relpath, write_dataset

    rows, images = [], {}
    for recipe in RECIPES:
        for label in ("good", "bad"):
            for i in range(PER_CLASS):
                # Good and bad of the same index share their scene: the pair differs by the topping only,
                # so use disjoint indices per label to keep the pair out of training.
                png = encode_png(_draw(recipe, label, i if label == "good" else i + PER_CLASS))
                image_id = image_id_of(png)
                images[image_id] = png
                frac = i / PER_CLASS
                rows.append({
                    "image_id": image_id, "path": image_relpath(image_id), "label": label, "recipe": recipe,
                    "defect_type": "" if label == "good" else "missing_topping",
                    "split": "train" if frac < 0.6 else ("val" if frac < 0.8 else "test"),
                    "group_id": image_id[:12], "source_path": f"{recipe}/{label}/{i}.png", "label_source": "folder",
                    "width": SIZE, "height": SIZE, "ingested_at": "2026-01-01T00:00:00Z",
                })
    return write_dataset(str(out), pd.DataFrame(rows), images)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from lineguard.config import load_config
    from lineguard.evaluate import evaluate_predictions, predict
    from lineguard.evaluate.scoring import TorchScorer
    from lineguard.train import train

    root = tmp_path_factory.mktemp("behaviour")
    dataset = _dataset(root / "ds")
    cfg = load_config(None, [
        f"workdir={root / 'work'}", "train.model=tinycnn", "train.width=0.5", "train.epochs=30", "train.lr=0.005",
        "train.warmup_epochs=0", "train.batch_size=16", "train.threads=1", f"preprocess.size=[{SIZE},{SIZE}]",
        "augment.strength=0.6", "evaluate.bootstrap=0", "evaluate.min_threshold_samples=50",
    ])
    result = train(cfg, dataset, track=False, progress=False)
    scorer = TorchScorer("behaviour", result.model, tuple(result.classes), "bad", result.preprocess)
    evaluation = evaluate_predictions(predict(scorer, dataset, "val"), predict(scorer, dataset, "test"), cfg.evaluate)
    return {"dataset": dataset, "scorer": scorer, "evaluation": evaluation}


def test_small_brightness_and_position_changes_do_not_flip_decisions(trained: dict[str, Any]) -> None:
    from lineguard.evaluate.behaviour import behaviour_checks

    ev, ds = trained["evaluation"], trained["dataset"]
    images = ds.read_images(ds.split("test"))
    out = behaviour_checks(trained["scorer"], images, ev.test_decisions(), ev.test.recipes, ev.test.labels,
                           ev.decision, min_recipe_balanced_accuracy=0.0, max_flip_rate=0.1)
    assert out["invariance"], "no perturbation was checked"
    for name, check in out["invariance"].items():
        assert check["flip_rate"] <= 0.1, f"{name} flipped {check['flipped']} of {check['n']} decisions"


def test_removing_the_topping_raises_the_defect_score(trained: dict[str, Any]) -> None:
    scorer = trained["scorer"]
    # Unseen items (indices beyond the dataset), each drawn twice from the same seed: with and without topping.
    for recipe in RECIPES:
        good = [_draw(recipe, "good", 1000 + i) for i in range(12)]
        bare = [_draw(recipe, "bad", 1000 + i) for i in range(12)]
        delta = scorer.margins(bare) - scorer.margins(good)
        assert np.mean(delta > 0) >= 0.8, f"{recipe}: removing the topping lowered the defect score: {delta}"
        assert float(np.median(delta)) > 0


def test_every_recipe_clears_a_minimum(trained: dict[str, Any]) -> None:
    per_recipe = trained["evaluation"].per_recipe_balanced_accuracy()
    assert set(per_recipe) == set(RECIPES)
    for recipe, balanced_accuracy in per_recipe.items():
        assert balanced_accuracy is not None and balanced_accuracy >= 0.75, f"{recipe}: {balanced_accuracy}"
