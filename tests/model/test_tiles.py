"""Small defects in large images: tiles + multiple-instance pooling learn what whole-image resizing erases.

The made-up strips are 32x512 grey noise; a defect is one 5x5 dark spot somewhere on the strip. Cut
into 16 tiles of 32 px (the model scores every tile and pools with log-sum-exp), the spot is 5 px in
one tile and the tiled model learns it. (Letterboxed whole into 32x32 the spot is a faint dip of a
fraction of a pixel; on this clean noise a whole-image model still finds it, so the tiles-versus-
resizing comparison is made on the real fabric strips, docs/benchmarks.md.) Also: the tiled 1-channel bundle exports with parity and the edge
Predictor (no torch needed) gives the decisions the evaluation saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lineguard.config import load_config
from lineguard.manifest import Dataset
from tests.unit.test_profile import make_dataset

pytestmark = pytest.mark.slow


def _strip(rng: np.random.Generator, bad: bool, recipe: int) -> np.ndarray:
    g = rng.integers(118, 138, (32, 512), dtype=np.uint8)  # mild noise: little to memorise, the spot stands out
    if bad:
        y, x = int(rng.integers(4, 23)), int(rng.integers(4, 503))
        g[y : y + 5, x : x + 5] = 5
    return np.repeat(g[:, :, None], 3, axis=2)


@pytest.fixture(scope="module")
def strips(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return make_dataset(tmp_path_factory.mktemp("strips") / "ds", _strip, good=100, bad=100, seed=3)


COMMON = ["train.model=tinycnn", "train.width=0.5", "train.batch_size=16", "train.threads=1", "train.epochs=12",
          "train.lr=0.01", "train.ema=0", "augment.strength=0", "preprocess.color=grey", "train.patience=12"]


def _train(ds: Dataset, tmp_path: Path, *extra: str, track: bool = False) -> Any:
    from rich.console import Console

    from lineguard.train import train

    cfg = load_config(None, [f"workdir={tmp_path / 'work'}", *COMMON, *extra])
    return train(cfg, ds, track=track, progress=False, console=Console(quiet=True))


def test_tiles_learn_a_small_spot_in_a_long_strip(strips: Dataset, tmp_path: Path) -> None:
    tiled = _train(strips, tmp_path, "preprocess.size=[32,512]", "preprocess.tile=[32,32]")
    assert tiled.val_metrics["balanced_accuracy"] >= 0.85, tiled.history[-1]
    assert tiled.model.tiling is not None and tiled.preprocess.tiles is not None


def test_auto_chooses_tiles_for_strips(strips: Dataset) -> None:
    from lineguard.profile import derive_recipe, profile_dataset

    config, _ = derive_recipe(profile_dataset(strips), load_config(None))
    assert config.preprocess.tile == (32, 32) and config.preprocess.size == (32, 512)
    assert config.preprocess.color == "grey"


def test_a_tiled_grey_bundle_exports_with_parity_and_runs_on_the_edge(strips: Dataset, tmp_path: Path) -> None:
    from lineguard.edge import Predictor, load_bundle
    from lineguard.export import export

    result = _train(strips, tmp_path, "preprocess.size=[32,512]", "preprocess.tile=[32,32]", "train.epochs=2",
                    track=True)
    cfg = load_config(None, [f"workdir={tmp_path / 'work'}", *COMMON, "export.golden_size=8",
                             "export.reference_images=16"])
    out = tmp_path / "bundle"
    exported = export(result.run_id, str(strips.root), out, cfg)
    assert exported.parity.passed, exported.parity
    bundle = load_bundle(out)
    assert bundle.preprocess.color == "grey" and bundle.preprocess.tiles is not None
    assert bundle.meta["model"]["inputs"]["image"] == [None, 1, 32, 512]
    predictor = Predictor(bundle)
    image = strips.read_image(strips.split("test")["path"].iloc[0])
    assert predictor.predict(image).decision in ("accept", "reject")  # type: ignore[union-attr]
