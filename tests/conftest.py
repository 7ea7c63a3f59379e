"""Shared fixtures. Tests make their own images; nothing comes from the network."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")


def draw_simple_item(rng: np.random.Generator, size: int, recipe_idx: int, good: bool) -> np.ndarray:
    """A minimal stand-in for a cone: a disc in a recipe colour, with dots on top when good."""
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size, 3), 60, np.uint8) + rng.integers(0, 20, (size, size, 3), dtype=np.uint8)
    cx, cy = size / 2 + rng.uniform(-size / 10, size / 10), size / 2 + rng.uniform(-size / 10, size / 10)
    r = size * rng.uniform(0.25, 0.32)
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
    colour = np.array([(200, 180, 120), (120, 70, 40), (230, 150, 170), (150, 220, 180), (210, 160, 60)][recipe_idx % 5])
    img[disc] = colour
    if good:
        for _ in range(25):
            a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0, r * 0.8)
            px, py = int(cx + d * np.cos(a)), int(cy + d * np.sin(a))
            img[max(0, py - 2) : py + 2, max(0, px - 2) : px + 2] = rng.integers(0, 255, 3)
    return img


def make_simple_dataset(out: Path, per_class: int = 20, recipes: int = 2, size: int = 64, seed: int = 0):
    """A tiny, valid Dataset written through the real manifest writer (for tests of later stages)."""
    from lineguard.manifest import encode_png, image_id_of, image_relpath, write_dataset

    rng = np.random.default_rng(seed)
    rows, images = [], {}
    for r in range(recipes):
        recipe = f"recipe_{r}"
        for label in ("good", "bad"):
            for i in range(per_class):
                png = encode_png(draw_simple_item(rng, size, r, label == "good"))
                image_id = image_id_of(png)
                images[image_id] = png
                frac = i / per_class
                split = "train" if frac < 0.6 else ("val" if frac < 0.8 else "test")
                rows.append(
                    {
                        "image_id": image_id, "path": image_relpath(image_id), "label": label, "recipe": recipe,
                        "defect_type": "" if label == "good" else "missing_topping", "split": split,
                        "group_id": image_id[:12], "source_path": f"{recipe}/{label}/{i}.png",
                        "label_source": "folder", "width": size, "height": size,
                        "ingested_at": "2026-01-01T00:00:00Z",
                    }
                )
    return write_dataset(str(out), pd.DataFrame(rows), images)


@pytest.fixture
def simple_dataset(tmp_path: Path):
    """A tiny two-recipe good/bad Dataset on disk."""
    return make_simple_dataset(tmp_path / "ds")
