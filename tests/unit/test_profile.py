"""train.recipe auto: the dataset profile and each derived choice, on made-up datasets; the budget planner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lineguard.config import load_config
from lineguard.manifest import Dataset, encode_png, image_id_of, image_relpath, write_dataset
from lineguard.profile import DatasetProfile, derive_recipe, profile_dataset
from lineguard.train import plan_epochs

Draw = Callable[[np.random.Generator, bool, int], np.ndarray]


def make_dataset(out: Path, draw: Draw, good: int, bad: int, recipes: int = 1, seed: int = 0) -> Dataset:
    """A Dataset of ``draw(rng, is_bad, recipe)`` images, all in train but a few for val/test."""
    rng = np.random.default_rng(seed)
    rows, images = [], {}
    for r in range(recipes):
        for label, n in (("good", good), ("bad", bad)):
            for i in range(n):
                img = draw(rng, label == "bad", r)
                png = encode_png(img)
                iid = image_id_of(png)
                images[iid] = png
                split = "train" if i < n * 0.7 else ("val" if i < n * 0.85 else "test")
                rows.append({"image_id": iid, "path": image_relpath(iid), "label": label, "recipe": f"r{r}",
                             "defect_type": "", "split": split, "group_id": iid[:12],
                             "source_path": f"{label}/{r}_{i}.png", "label_source": "folder",
                             "width": img.shape[1], "height": img.shape[0], "ingested_at": "2026-01-01T00:00:00Z"})
    return write_dataset(str(out), pd.DataFrame(rows), images)


def grey_texture(h: int, w: int) -> Draw:
    def draw(rng: np.random.Generator, bad: bool, recipe: int) -> np.ndarray:
        g = rng.integers(90, 140, (h, w), dtype=np.uint8)
        if bad:
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            g[y : y + 4, x : x + 4] = 10
        return np.repeat(g[:, :, None], 3, axis=2)

    return draw


def colour_object(rng: np.random.Generator, bad: bool, recipe: int) -> np.ndarray:
    """A cone-like picture with an 'up': a bright scoop on top, a dark cone below, on a coloured belt."""
    img = np.zeros((64, 64, 3), np.uint8)
    img[:] = (40, 90, 160)
    img[8:28, 20:44] = (240, 200, 150) if not bad else (120, 60, 30)
    for y in range(28, 60):
        half = max(1, (60 - y) // 3)
        img[y, 32 - half : 32 + half] = (180, 130, 60)
    return img


def _derive(ds: Dataset, *overrides: str) -> tuple[Any, dict[str, Any]]:
    config, recipe = derive_recipe(profile_dataset(ds), load_config(None, list(overrides)))
    return config, {c.key: c for c in recipe.choices}


def test_grey_square_texture_gets_a_grey_model_and_the_eight_symmetries(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", grey_texture(200, 200), good=30, bad=10)
    profile = profile_dataset(ds)
    assert profile.grey and profile.imbalance == pytest.approx(21 / 7)
    config, choices = _derive(ds)
    assert config.preprocess.color == "grey" and config.preprocess.tile is None
    assert config.preprocess.size == (160, 160)  # 200 px: resolution kept within the grey model's budget
    assert (config.augment.hflip, config.augment.vflip) == (0.5, 0.5)
    assert config.train.model == "convnet" and config.train.batch_size == 32
    assert "grey" in choices["preprocess.color"].reason
    # real photos: lossless geometry only, since resampling blurs thin defects the test images show sharp
    assert (config.augment.rotate_deg, config.augment.scale, config.augment.translate) == (0.0, 0.0, 0.0)
    assert "blurs a thin crack" in choices["augment.rotate_deg"].reason


def test_long_strips_are_tiled_and_the_tile_decides_the_symmetries(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", grey_texture(64, 1024), good=12, bad=12)
    config, choices = _derive(ds)
    assert config.preprocess.tile == (64, 64)
    assert config.preprocess.size == (64, 1024)  # 16 tiles along the strip, no downscaling
    assert config.preprocess.resize == "stretch"  # every strip has the same aspect ratio
    assert config.augment.vflip == 0.5 and config.augment.rot90 == 0.0  # quarter turns of a strip do not exist
    assert "erases small defects" in choices["preprocess.tile"].reason


def test_a_large_square_image_is_tiled_on_a_grid(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", grey_texture(640, 640), good=4, bad=4)
    config, _ = _derive(ds)
    assert config.preprocess.tile == (128, 128)
    assert config.preprocess.size[0] == config.preprocess.size[1] and config.preprocess.size[0] >= 256


def test_colour_objects_with_an_up_keep_it_and_recipes_keep_their_head(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", colour_object, good=10, bad=10, recipes=2)
    profile = profile_dataset(ds)
    assert not profile.grey and profile.recipes == ["r0", "r1"]
    config, choices = _derive(ds)
    assert config.preprocess.color == "rgb"
    assert config.augment.vflip == 0.0 and config.augment.rot90 == 0.0 and config.augment.hflip == 0.5
    assert config.train.model == "tinycnn"  # small colour images with recipes: the recipe-head network
    assert config.augment.rotate_deg == 15.0 and config.augment.translate > 0  # cones tilt and shift on a belt
    assert "not symmetric" in choices["augment.vflip"].reason


def test_an_explicit_key_wins_and_is_reported_as_overridden(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", grey_texture(100, 100), good=8, bad=8)
    config, choices = _derive(ds, "preprocess.size=[64,64]", "train.model=tinycnn", "augment.rot90=0",
                              "augment.translate=0.05")
    assert config.preprocess.size == (64, 64) and config.train.model == "tinycnn" and config.augment.rot90 == 0
    assert config.augment.translate == 0.05 and choices["augment.translate"].overridden
    assert choices["preprocess.size"].overridden and choices["train.model"].overridden
    assert not choices["preprocess.color"].overridden


def test_strong_imbalance_is_balanced_by_the_sampler(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", grey_texture(64, 64), good=40, bad=8)
    _, choices = _derive(ds)
    assert choices["train.balance"].value == "sampler" and "imbalanced" in choices["train.balance"].reason


def test_the_profile_is_reproducible(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", colour_object, good=6, bad=6)
    a, b = profile_dataset(ds), profile_dataset(ds)
    assert isinstance(a, DatasetProfile) and a == b


@pytest.mark.parametrize(
    ("budget", "elapsed", "epoch", "cap", "expected"),
    [(240.0, 20.0, 10.0, 150, 21),  # 1 + floor((228 - 20) / 10)
     (240.0, 20.0, 0.5, 150, 150),  # the cap
     (60.0, 70.0, 30.0, 150, 1),  # already over: the first epoch is all there is
     (100.0, 5.0, 0.0, 40, 40)],
)
def test_plan_epochs(budget: float, elapsed: float, epoch: float, cap: int, expected: int) -> None:
    assert plan_epochs(budget, elapsed, epoch, cap) == expected
