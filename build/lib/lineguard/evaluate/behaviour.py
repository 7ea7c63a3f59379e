"""Behavioural checks of a trained model: invariance and minimum function.

- **Invariance**: small nuisance changes a camera produces anyway (a few percent of
  brightness, a shift of a few pixels) must not flip decisions. Measured as the share
  of test images whose decision changes.
- **Minimum function**: every recipe reaches a floor of balanced accuracy (a model that
  is great on average but blind on one recipe is not shippable).

The *direction* check (removing the topping must raise the defect score) needs a way
to draw the same item with and without its topping; it lives in
``tests/model/test_behaviour.py`` over the toy data generator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lineguard.edge.decision import Decision
from lineguard.evaluate import metrics as m
from lineguard.evaluate.scoring import Scorer

# How much change counts as "small": what a line sees between two frames of the same item.
MAX_FLIP_RATE = 0.02


def brighten(image: np.ndarray, factor: float) -> np.ndarray:
    """Scale pixel values by ``factor`` (0.9 = 10 % darker), clipped to uint8."""
    return np.clip(image.astype(np.float32) * factor + 0.5, 0, 255).astype(np.uint8)


def shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move the image content by (dy, dx) pixels, repeating the border into the gap."""
    h, w = image.shape[:2]
    ys = np.clip(np.arange(h) - dy, 0, h - 1)
    xs = np.clip(np.arange(w) - dx, 0, w - 1)
    return image[ys][:, xs]


def perturbations(size: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The nuisance changes checked: ±10 % brightness, a shift of ~2 % of the side."""
    px = max(1, round(size * 0.02))
    return {
        "brightness -10%": lambda im: brighten(im, 0.9),
        "brightness +10%": lambda im: brighten(im, 1.1),
        f"shift {px}px right": lambda im: shift(im, 0, px),
        f"shift {px}px down": lambda im: shift(im, px, 0),
    }


def behaviour_checks(
    scorer: Scorer,
    images: Sequence[np.ndarray],
    base_decisions: np.ndarray,
    recipes: Any,
    labels: Any,
    decision: Decision,
    min_recipe_balanced_accuracy: float = 0.9,
    per_recipe: Mapping[str, float | None] | None = None,
    max_flip_rate: float = MAX_FLIP_RATE,
) -> dict[str, Any]:
    """Flip rates under each perturbation and the per-recipe floor; ``passed`` if all hold."""
    r = np.asarray(recipes, dtype=object)
    per_item = decision.thresholds_for(r)
    out: dict[str, Any] = {"invariance": {}, "minimum_function": {}, "max_flip_rate": max_flip_rate}
    passed = True
    if len(images):
        side = int(min(images[0].shape[:2]))
        for name, change in perturbations(side).items():
            scores = decision.scores_from_margins(scorer.margins([change(im) for im in images]))
            flipped = m.decisions(scores, per_item) != np.asarray(base_decisions)
            rate = float(flipped.mean())
            ok = rate <= max_flip_rate
            passed &= ok
            out["invariance"][name] = {"flip_rate": rate, "flipped": int(flipped.sum()), "n": len(images),
                                       "passed": ok}
    if per_recipe is None:
        y, d = np.asarray(labels, dtype=np.int64), np.asarray(base_decisions)
        per_recipe = {
            str(k): m.clean(m.rates(m.confusion(y[r == k], d[r == k]))["balanced_accuracy"])
            for k in sorted(set(r.tolist()))
        }
    for recipe, ba in sorted(per_recipe.items()):
        ok = ba is not None and ba >= min_recipe_balanced_accuracy
        passed &= ok
        out["minimum_function"][recipe] = {"balanced_accuracy": ba, "limit": min_recipe_balanced_accuracy,
                                           "passed": ok}
    out["passed"] = bool(passed)
    return out
