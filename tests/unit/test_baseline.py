"""The classical baseline: pure feature function, metrics, and a tracked run on a tiny dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lineguard.baseline import (
    BaselineError,
    balanced_accuracy,
    baseline,
    candidates_table,
    feature_names,
    image_features,
    scores_table,
    slice_metrics,
)
from lineguard.config import load_config

TINY_GRID = {
    "logistic_regression": [{"C": 0.1}, {"C": 1.0}],
    "hist_gradient_boosting": [{"learning_rate": 0.1, "max_leaf_nodes": 7}],
}


def _flat(colour: tuple[int, int, int], size: int = 48) -> np.ndarray:
    return np.full((size, size, 3), colour, np.uint8)


def _part(vec: np.ndarray, name: str) -> np.ndarray:
    names = feature_names()
    return vec[[i for i, n in enumerate(names) if n.startswith(name)]]


def test_feature_length_is_fixed_and_named() -> None:
    rng = np.random.default_rng(0)
    a = image_features(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    b = image_features(rng.integers(0, 256, (61, 97, 3), dtype=np.uint8))
    assert a.shape == b.shape == (len(feature_names()),)
    assert len(set(feature_names())) == len(feature_names())
    assert a.dtype == np.float32 and np.isfinite(a).all()


def test_features_are_deterministic() -> None:
    img = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_features(img), image_features(img.copy()))


def test_histograms_are_normalised() -> None:
    vec = image_features(np.random.default_rng(2).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    for region in ("r00", "r11", "all"):
        for kind in ("sat", "val", "orient"):
            assert _part(vec, f"{region}.{kind}").sum() == pytest.approx(1.0, abs=1e-5)
    assert _part(vec, "lbp").sum() == pytest.approx(1.0, abs=1e-5)


def test_colour_moves_the_hue_histogram() -> None:
    red, blue = image_features(_flat((220, 20, 20))), image_features(_flat((20, 20, 220)))
    red_hue, blue_hue = _part(red, "all.hue"), _part(blue, "all.hue")
    assert red_hue.argmax() == 0  # hue 0 = red
    assert blue_hue.argmax() == int(2 / 3 * len(blue_hue))  # hue 2/3 = blue
    # a grey image has no saturation, hence an empty hue histogram
    assert _part(image_features(_flat((128, 128, 128))), "all.hue").sum() == 0


def test_edges_and_texture_react_to_dots() -> None:
    plain = _flat((200, 180, 120))
    dotted = plain.copy()
    for y in range(4, 44, 8):
        for x in range(4, 44, 8):
            dotted[y : y + 3, x : x + 3] = (20, 60, 220)
    f_plain, f_dotted = image_features(plain), image_features(dotted)
    assert _part(f_plain, "all.edge_density")[0] == 0.0
    assert _part(f_dotted, "all.edge_density")[0] > 0.1
    assert _part(f_dotted, "all.lvar_mean")[0] > _part(f_plain, "all.lvar_mean")[0]
    # flat image: every pixel has 0 brighter neighbours
    assert _part(f_plain, "lbp")[0] == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [np.zeros((48, 48), np.uint8), np.zeros((48, 48, 3), np.float32),
                                 np.zeros((4, 4, 3), np.uint8)])
def test_bad_images_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(BaselineError):
        image_features(bad)


def test_balanced_accuracy_and_slices() -> None:
    y = np.array([0, 0, 0, 1, 1, 0, 1, 1])
    p = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    recipes = ["a", "a", "a", "a", "b", "b", "b", "b"]
    assert balanced_accuracy(y, p) == pytest.approx((3 / 4 + 3 / 4) / 2)
    m = slice_metrics(y, p, recipes)
    assert m["per_recipe"]["a"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["per_recipe"]["b"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["n"] == 8 and m["accuracy"] == pytest.approx(6 / 8)
    # a slice with one class present: the recall of that class
    assert balanced_accuracy(np.array([1, 1]), np.array([1, 0])) == 0.5


def test_baseline_run_is_tracked(simple_dataset, tmp_path: Path) -> None:
    from lineguard import tracking

    cfg = load_config(None, [f"workdir={tmp_path / 'work'}", "preprocess.size=[48,48]"])
    result = baseline(cfg, simple_dataset, grid=TINY_GRID, progress=False)
    # the simple dataset is easy for colour/edge features: dots present or not
    assert result.val_metrics["balanced_accuracy"] >= 0.9
    assert result.test_metrics["balanced_accuracy"] >= 0.9
    assert set(result.test_metrics["per_recipe"]) == set(simple_dataset.recipes)
    assert len(result.candidates) == 3
    best_val = max(c.val_balanced_accuracy for c in result.candidates)
    assert result.val_metrics["balanced_accuracy"] == pytest.approx(best_val)
    assert result.model.predict(np.zeros((1, result.num_features), np.float32)).shape == (1,)

    assert result.run_id is not None
    assert cfg.tracking_uri().startswith("sqlite:///")
    run = tracking.load_run(cfg, result.run_id)
    assert run.status == "FINISHED"
    assert run.tags[tracking.TAG_KIND] == "baseline"
    assert run.tags[tracking.TAG_DATASET_VERSION] == simple_dataset.version
    assert run.params["baseline.classifier"] == result.classifier
    assert run.metrics["test_balanced_accuracy"] == pytest.approx(result.test_metrics["balanced_accuracy"])
    for recipe in simple_dataset.recipes:
        assert f"test_balanced_accuracy.{recipe}" in run.metrics
    artifacts = tracking.list_artifacts(cfg, result.run_id)
    assert "baseline/candidates.json" in artifacts and tracking.CONFIG_ARTIFACT in artifacts
    # the tables render
    assert candidates_table(result).row_count == 3
    assert scores_table(result).row_count == 1 + len(simple_dataset.recipes)


def test_one_class_dataset_is_refused(simple_dataset, tmp_path: Path) -> None:
    from lineguard.manifest import write_dataset

    ds = simple_dataset
    good = ds.manifest[ds.manifest["label"] == "good"]
    images = {row.image_id: (Path(ds.root) / row.path).read_bytes() for row in good.itertuples()}
    only_good = write_dataset(str(tmp_path / "good"), good, images)
    cfg = load_config(None, [f"workdir={tmp_path / 'work'}"])
    with pytest.raises(BaselineError, match="class"):
        baseline(cfg, only_good, track=False, progress=False)


def test_empty_grid_is_refused(simple_dataset, tmp_path: Path) -> None:
    cfg = load_config(None, [f"workdir={tmp_path / 'work'}", "preprocess.size=[32,32]"])
    with pytest.raises(BaselineError, match="grid"):
        baseline(cfg, simple_dataset, grid={"logistic_regression": []}, track=False, progress=False)
