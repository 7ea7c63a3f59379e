"""Unit tests of the toy-data generator: drawing, determinism, counts, drift, video, CLI."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

from lineguard import LineguardError
from lineguard.config import SynthConfig
from lineguard.preprocess import decode_image, image_stats
from lineguard.synth import (
    DEFECT_TYPES,
    DRIFT_KINDS,
    RECIPE_IDS,
    SynthError,
    apply_drift,
    draw_cone,
    make_items,
    messy_recipe_folder,
    synth,
    write_video,
)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read_truth(root: Path) -> list[dict[str, str]]:
    with open(root / ".truth" / "ground_truth.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("size", [64, 96])
def test_draw_cone_returns_rgb_uint8_of_the_requested_size(size: int) -> None:
    img = draw_cone(np.random.default_rng(0), "vanilla_sprinkles", "good", "", size, 0.5)
    assert img.shape == (size, size, 3)
    assert img.dtype == np.uint8
    assert 20 < img.mean() < 235  # neither black nor blown out


def test_draw_cone_same_rng_same_pixels_other_rng_other_pixels() -> None:
    a = draw_cone(np.random.default_rng(7), "mint_chips", "bad", "spillage", 64)
    b = draw_cone(np.random.default_rng(7), "mint_chips", "bad", "spillage", 64)
    c = draw_cone(np.random.default_rng(8), "mint_chips", "bad", "spillage", 64)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("recipe", "label", "defect"),
    [("nope", "good", ""), ("mint_chips", "meh", ""), ("mint_chips", "good", "spillage"),
     ("mint_chips", "bad", ""), ("mint_chips", "bad", "burnt")],
)
def test_draw_cone_rejects_unknown_values(recipe: str, label: str, defect: str) -> None:
    with pytest.raises(SynthError):
        draw_cone(np.random.default_rng(0), recipe, label, defect, 64)


@pytest.mark.parametrize("recipe", RECIPE_IDS)
def test_every_recipe_and_defect_can_be_drawn(recipe: str) -> None:
    rng = np.random.default_rng(1)
    good = draw_cone(rng, recipe, "good", "", 64, 0.0)
    for defect in DEFECT_TYPES:
        bad = draw_cone(rng, recipe, "bad", defect, 64, 0.0)
        assert bad.shape == good.shape


@pytest.mark.parametrize("recipe", RECIPE_IDS)
def test_topping_coverage_good_vs_partial_vs_missing(recipe: str) -> None:
    """Same stream, same cone: only the topping differs; partial covers clearly less than good."""
    from lineguard.synth import Item, _scene

    def topping_pixels(defect: str, seed: int) -> int:
        base = _scene(np.random.default_rng(seed), Item(recipe, "bad", "missing_topping", 0, recipe), 64, 0.0)
        item = Item(recipe, "bad" if defect else "good", defect, 0, recipe)
        img = _scene(np.random.default_rng(seed), item, 64, 0.0)
        return int((np.abs(img - base).max(axis=2) > 0.08).sum())

    good = sum(topping_pixels("", s) for s in range(6))
    partial = sum(topping_pixels("partial_topping", s) for s in range(6))
    wrong = sum(topping_pixels("wrong_topping", s) for s in range(6))
    assert good > 0 and wrong > 0
    assert 0 < partial < 0.5 * good


def test_items_cover_every_recipe_label_and_defect() -> None:
    cfg = SynthConfig(recipes=8, per_class=8)
    items = make_items(cfg)
    assert len(items) == 8 * 2 * 8
    for recipe in RECIPE_IDS:
        for label in ("good", "bad"):
            assert sum(1 for it in items if it.recipe == recipe and it.label == label) == 8
        defects = {it.defect_type for it in items if it.recipe == recipe and it.label == "bad"}
        assert defects == set(DEFECT_TYPES)
    assert all(it.defect_type == "" for it in items if it.label == "good")
    assert len({it.item_id for it in items}) == len(items)


def test_synth_same_seed_identical_bytes_whatever_the_workers(tmp_path: Path) -> None:
    # 2 recipes x 2 labels x 8 = 32 items: enough for the process pool to be used.
    cfg = SynthConfig(recipes=2, per_class=8, size=64, seed=11)
    synth(str(tmp_path / "a"), cfg, workers=1)
    synth(str(tmp_path / "b"), cfg, workers=2)
    synth(str(tmp_path / "c"), cfg.model_copy(update={"seed": 12}), workers=1)
    a, b, c = (_tree_digest(tmp_path / n) for n in "abc")
    assert a == b
    assert set(a) == set(c)
    images = [k for k in a if k.endswith(".png")]
    assert sum(a[k] != c[k] for k in images) == len(images)


def test_synth_clean_layout_counts_names_and_truth(tmp_path: Path) -> None:
    cfg = SynthConfig(recipes=3, per_class=5, size=64)
    result = synth(str(tmp_path / "ds"), cfg)
    root = tmp_path / "ds"
    assert result.layout == "clean"
    assert result.counts == {r: {"good": 5, "bad": 5} for r in RECIPE_IDS[:3]}
    assert sum(result.defect_counts.values()) == 15
    for recipe in RECIPE_IDS[:3]:
        for label in ("good", "bad"):
            files = sorted((root / recipe / label).glob("*.png"))
            assert len(files) == 5
            assert all(f.name.startswith(f"{recipe}_{label}_") for f in files)
    rows = _read_truth(root)
    assert len(rows) == 30
    for row in rows:
        assert (root / row["source_path"]).is_file()
        assert row["expected"] == "image"
        defect = row["defect_type"] or "ok"
        assert Path(row["source_path"]).name.startswith(f"{row['recipe']}_{row['label']}_{defect}_")
        img = decode_image((root / row["source_path"]).read_bytes())
        assert img.shape == (64, 64, 3)
    assert not list(tmp_path.glob(".ds.*"))  # the staging folder is gone


def test_synth_refuses_a_non_empty_folder_and_force_replaces_only_its_own(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    cfg = SynthConfig(recipes=1, per_class=1, size=64)
    with pytest.raises(SynthError, match="not empty"):
        synth(str(out), cfg)
    assert (out / "keep.txt").read_text() == "precious"
    with pytest.raises(SynthError, match="not written by lineguard data synth"):
        synth(str(out), cfg, overwrite=True)  # --force never deletes a folder synth did not make
    assert (out / "keep.txt").read_text() == "precious"
    made = tmp_path / "made"
    synth(str(made), cfg)
    synth(str(made), SynthConfig(recipes=1, per_class=2, size=64), overwrite=True)
    assert len(_read_truth(made)) == 4


def test_synth_rejects_bad_drift_and_severity(tmp_path: Path) -> None:
    cfg = SynthConfig(recipes=1, per_class=1, size=64)
    with pytest.raises(SynthError, match="unknown drift"):
        synth(str(tmp_path / "a"), cfg, drift="fog")
    with pytest.raises(SynthError, match="severity"):
        synth(str(tmp_path / "b"), cfg, drift="blur", severity=1.5)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_new_recipe_drift_draws_an_unseen_recipe(tmp_path: Path) -> None:
    cfg = SynthConfig(recipes=5, per_class=4, size=64)
    result = synth(str(tmp_path / "ds"), cfg, drift="new-recipe", severity=0.5, workers=1)
    assert "pistachio_coconut" in result.counts
    assert result.counts["pistachio_coconut"] == {"good": 10, "bad": 10}
    assert result.counts["vanilla_sprinkles"] == {"good": 2, "bad": 2}
    with pytest.raises(SynthError, match="new-recipe"):
        make_items(SynthConfig(recipes=8, per_class=2), drift="new-recipe", severity=0.5)


def test_image_drift_changes_every_image(tmp_path: Path) -> None:
    cfg = SynthConfig(recipes=1, per_class=2, size=64)
    synth(str(tmp_path / "clean"), cfg)
    synth(str(tmp_path / "lens"), cfg, drift="dirty-lens", severity=0.8)
    clean, lens = _tree_digest(tmp_path / "clean"), _tree_digest(tmp_path / "lens")
    assert set(clean) - {".truth/synth.json"} == set(lens) - {".truth/synth.json"}
    for name in (k for k in clean if k.endswith(".png")):
        a = decode_image((tmp_path / "clean" / name).read_bytes())
        b = decode_image((tmp_path / "lens" / name).read_bytes())
        assert image_stats(b)["sharpness"] < image_stats(a)["sharpness"]


# --- drift -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cones() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [draw_cone(rng, r, "good", "", 96, 0.5) for r in RECIPE_IDS[:5]]


def _mean_stat(images: list[np.ndarray], key: str) -> float:
    return float(np.mean([image_stats(i)[key] for i in images]))


@pytest.mark.parametrize("kind", [k for k in DRIFT_KINDS if k != "new-recipe"])
def test_drift_is_pure_and_zero_severity_is_identity(kind: str, cones: list[np.ndarray]) -> None:
    img = cones[0]
    before = img.copy()
    out = apply_drift(img, kind, 0.6, np.random.default_rng(0))
    assert np.array_equal(img, before)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out, img)
    assert np.array_equal(apply_drift(img, kind, 0.0, np.random.default_rng(0)), img)
    again = apply_drift(img, kind, 0.6, np.random.default_rng(0))
    assert np.array_equal(out, again)


def test_dirty_lens_lowers_sharpness_and_contrast(cones: list[np.ndarray]) -> None:
    drifted = [apply_drift(c, "dirty-lens", 0.5, np.random.default_rng(i)) for i, c in enumerate(cones)]
    assert _mean_stat(drifted, "sharpness") < 0.7 * _mean_stat(cones, "sharpness")
    assert _mean_stat(drifted, "contrast") < 0.85 * _mean_stat(cones, "contrast")


def test_lighting_lowers_brightness(cones: list[np.ndarray]) -> None:
    drifted = [apply_drift(c, "lighting", 0.5, np.random.default_rng(i)) for i, c in enumerate(cones)]
    assert _mean_stat(drifted, "brightness") < 0.85 * _mean_stat(cones, "brightness")


def test_blur_lowers_sharpness_and_keeps_brightness(cones: list[np.ndarray]) -> None:
    drifted = [apply_drift(c, "blur", 0.5, np.random.default_rng(i)) for i, c in enumerate(cones)]
    assert _mean_stat(drifted, "sharpness") < 0.7 * _mean_stat(cones, "sharpness")
    assert abs(_mean_stat(drifted, "brightness") - _mean_stat(cones, "brightness")) < 2.0


def test_color_cast_shifts_red_up_and_blue_down(cones: list[np.ndarray]) -> None:
    drifted = [apply_drift(c, "color-cast", 0.5, np.random.default_rng(i)) for i, c in enumerate(cones)]
    assert _mean_stat(drifted, "mean_r") > _mean_stat(cones, "mean_r") + 5
    assert _mean_stat(drifted, "mean_b") < _mean_stat(cones, "mean_b") - 5


def test_camera_shift_moves_the_cone(cones: list[np.ndarray]) -> None:
    img = cones[1]
    out = apply_drift(img, "camera-shift", 1.0, np.random.default_rng(0))
    assert np.abs(out.astype(int) - img.astype(int)).mean() > 5
    # the picture moved, its colours did not change much
    assert abs(image_stats(out)["brightness"] - image_stats(img)["brightness"]) < 10


def test_drift_severity_is_monotone(cones: list[np.ndarray]) -> None:
    sharp = [image_stats(apply_drift(cones[2], "dirty-lens", s, np.random.default_rng(0)))["sharpness"]
             for s in (0.0, 0.3, 0.6, 1.0)]
    assert sharp == sorted(sharp, reverse=True)


def test_apply_drift_refuses_bad_input(cones: list[np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(SynthError, match="new-recipe"):
        apply_drift(cones[0], "new-recipe", 0.5, rng)
    with pytest.raises(SynthError, match="unknown drift"):
        apply_drift(cones[0], "rain", 0.5, rng)
    with pytest.raises(SynthError, match="severity"):
        apply_drift(cones[0], "blur", -0.1, rng)
    with pytest.raises(SynthError, match="uint8"):
        apply_drift(cones[0].astype(np.float32), "blur", 0.5, rng)


# --- names, video, CLI -------------------------------------------------------------------------


@pytest.mark.parametrize("position", range(8))
def test_messy_recipe_folder_normalises_back_to_the_id(position: int) -> None:
    import re

    for recipe in RECIPE_IDS:
        name = messy_recipe_folder(recipe, position)
        assert re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") == recipe


def test_video_has_the_right_frames_and_truth(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    cfg = SynthConfig(recipes=2, size=64, video_frames_per_cone=6)
    path, truth = write_video(str(tmp_path / "line.avi"), cfg, cones=4, drift="lighting", severity=0.6)
    cap = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 24
    assert frames[0].shape == (64, 64, 3)
    with open(truth, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == list(range(24))
    centred = [r for r in rows if r["centred"] == "1"]
    assert len(centred) == 4 and len({r["item_id"] for r in centred}) == 4
    assert {r["recipe"] for r in rows} == set(RECIPE_IDS[:2])
    assert all(r["label"] in ("good", "bad") for r in rows)
    assert all((r["defect_type"] == "") == (r["label"] == "good") for r in rows)
    assert [r["drift"] for r in rows] == [""] * 12 + ["lighting"] * 12
    # the lamp dims half-way through
    first = np.mean([f.mean() for f in frames[:12]])
    second = np.mean([f.mean() for f in frames[12:]])
    assert second < 0.85 * first


def test_cli_synth_writes_and_overrides_config(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lineguard.cli import app

    cfg_file = tmp_path / "lineguard.yaml"
    cfg_file.write_text("synth:\n  recipes: 2\n  per_class: 3\n  size: 64\n")
    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["data", "synth", str(out), "--config", str(cfg_file), "--per-class", "2",
                                      "--set", "synth.seed=4"])
    assert result.exit_code == 0, result.output
    rows = _read_truth(out)
    assert len(rows) == 2 * 2 * 2
    assert {r["recipe"] for r in rows} == set(RECIPE_IDS[:2])


def test_cli_synth_bad_drift_is_a_user_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lineguard.cli import app

    result = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "ds"), "--drift", "fog", "--size", "64"])
    assert isinstance(result.exception, LineguardError)
    assert "drift" in str(result.exception)
    assert not (tmp_path / "ds").exists()


def test_synth_writes_to_an_fsspec_url() -> None:
    """Object stores get the same files (written through storage.py); memory:// stands in for s3://."""
    from lineguard import storage

    url = "memory://lineguard-synth-test/ds"
    try:
        result = synth(url, SynthConfig(recipes=1, per_class=2, size=64), workers=1)
        files = set(storage.walk_files(url))
        assert ".truth/ground_truth.csv" in files
        assert len([f for f in files if f.endswith(".png")]) == 4
        truth = list(csv.DictReader(io.StringIO(storage.read_text(result.truth_path))))
        assert {r["source_path"] for r in truth} <= files
        with pytest.raises(SynthError, match="already holds files"):
            synth(url, SynthConfig(recipes=1, per_class=2, size=64), workers=1)
    finally:
        storage.remove("memory://lineguard-synth-test", recursive=True)
