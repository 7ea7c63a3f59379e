"""Stratified, grouped, seeded train/val/test assignment and the balanced test split."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def assign_splits(
    groups: dict[str, tuple[str, int]], fractions: dict[str, float], seed: int
) -> dict[str, str]:
    """Split groups (id -> (stratum, size)) into train/val/test, stratified, reproducible from the seed.

    Within each stratum the groups are shuffled by the seed and each goes to the split
    furthest below its target share of that stratum's images.
    """
    total = sum(fractions.values())
    shares = {k: fractions[k] / total for k in ("train", "val", "test")}
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for gid, (stratum, _) in groups.items():
        by_stratum[stratum].append(gid)
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for stratum in sorted(by_stratum):
        ids = sorted(by_stratum[stratum])
        order = [ids[i] for i in rng.permutation(len(ids))]
        n = sum(groups[g][1] for g in ids)
        counts = dict.fromkeys(shares, 0)
        for gid in order:
            best = max(shares, key=lambda s: (shares[s] * n - counts[s], shares[s]))
            out[gid] = best
            counts[best] += groups[gid][1]
    return out




def balance_test(
    items: list[tuple[str, str, str]], split_of: dict[str, str], seed: int, holdout: str
) -> tuple[list[str], list[str]]:
    """Downsample each recipe's test split to equal counts per class, in place in ``split_of``.

    ``items`` are ``(image_id, recipe, label)``. The surplus images of the larger classes
    move to ``holdout`` (kept in the dataset, out of every split). Returns the moved image
    ids and warnings for recipes whose test split lacks a class.
    """
    rng = np.random.default_rng(seed + 1)
    moved: list[str] = []
    warnings: list[str] = []
    per_recipe: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for image_id, recipe, label in sorted(items):
        if split_of[image_id] == "test":
            per_recipe[recipe][label].append(image_id)
        else:
            per_recipe[recipe]
    for recipe in sorted(per_recipe):
        per_label = per_recipe[recipe]
        if len(per_label) < 2:
            have = f"only '{next(iter(per_label))}'" if per_label else "no"
            warnings.append(f"recipe '{recipe}': the test split has {have} images, so it cannot be balanced")
            continue
        m = min(len(v) for v in per_label.values())
        for label in sorted(per_label):
            ids = per_label[label]
            if len(ids) > m:
                for idx in sorted(rng.choice(len(ids), len(ids) - m, replace=False)):
                    split_of[ids[idx]] = holdout
                    moved.append(ids[idx])
    return moved, warnings
