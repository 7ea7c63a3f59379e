"""Behaviour of a model trained by ``train``: minimum function, direction and invariance.

The tiny disc dataset of conftest: good items carry dots (the "topping"), bad ones do not.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from lineguard.config import load_config
from lineguard.preprocess import preprocess
from lineguard.train import TrainResult, train
from tests.conftest import draw_simple_item, make_simple_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    root = tmp_path_factory.mktemp("behaviour")
    ds = make_simple_dataset(root / "ds", per_class=30, recipes=2, size=48)
    cfg = load_config(None, [f"workdir={root / 'work'}", "train.model=tinycnn", "train.width=0.5",
                             "preprocess.size=[48,48]", "train.batch_size=16", "train.epochs=12", "train.lr=0.01",
                             "train.threads=1"])
    return train(cfg, ds, track=False, progress=False)


def _p_bad(result: TrainResult, images: list[np.ndarray]) -> np.ndarray:
    x = torch.from_numpy(np.stack([preprocess(im, result.preprocess) for im in images]))
    with torch.no_grad():
        return torch.softmax(result.model(x), 1)[:, 1].numpy()


def _pairs(n: int = 12) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The same item drawn with and without its dots (same random stream up to the dots)."""
    good, bad = [], []
    for i in range(n):
        good.append(draw_simple_item(np.random.default_rng(100 + i), 48, i % 2, True))
        bad.append(draw_simple_item(np.random.default_rng(100 + i), 48, i % 2, False))
    return good, bad


def test_minimum_function(trained: TrainResult) -> None:
    assert trained.val_metrics["balanced_accuracy"] >= 0.85
    assert trained.test_metrics["balanced_accuracy"] >= 0.85


def test_removing_the_topping_raises_the_defect_score(trained: TrainResult) -> None:
    good, bad = _pairs()
    assert float(np.mean(_p_bad(trained, bad) - _p_bad(trained, good))) > 0.3


def test_mirror_image_gets_the_same_decision(trained: TrainResult) -> None:
    good, bad = _pairs()
    images = good + bad
    flipped: list[Any] = [np.ascontiguousarray(im[:, ::-1]) for im in images]
    same = (_p_bad(trained, images) > 0.5) == (_p_bad(trained, flipped) > 0.5)
    assert float(same.mean()) >= 0.9
