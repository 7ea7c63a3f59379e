"""The candidate search within the budget (``train.search``) and budgets too small to train anything.

Candidates are derived from made-up profiles (no training). The search itself runs on a tiny
dataset with a fake clock that advances one "second" per reading, so every plan and every
fallback is the same on any machine: a test never depends on how fast the CPU is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from lineguard.config import load_config
from lineguard.manifest import Dataset
from lineguard.profile import derive_candidates, profile_dataset
from lineguard.train import SEARCH_MIN_EPOCHS, SEARCH_MIN_VAL, BudgetTooSmall, fit, prepare_data, train
from tests.conftest import make_simple_dataset
from tests.unit.test_profile import grey_texture, make_dataset


class TickClock:
    """A fake clock: every reading is one tick (1 s) after the previous one."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


# --- candidates from the profile ------------------------------------------------------------------


def _candidates(ds: Dataset, *overrides: str) -> dict[str, Any]:
    return {c.name: c for c in derive_candidates(profile_dataset(ds), load_config(None, list(overrides)))}


def test_a_plain_profile_gets_the_derived_recipe_a_wider_one_and_another_input_size(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", grey_texture(200, 200), good=10, bad=10)
    cands = _candidates(ds)
    assert list(cands) == ["derived", "wider", "smaller-input"]
    derived = cands["derived"].config
    assert cands["derived"].changes == {}
    assert cands["wider"].changes == {"train.width": 1.5} and cands["wider"].config.train.width == 1.5
    # 200 px images at 160 px: the input already holds (nearly) every pixel, so the third tries a smaller one
    assert derived.preprocess.size == (160, 160) and cands["smaller-input"].changes == {"preprocess.size": (128, 128)}
    assert cands["smaller-input"].config.preprocess.color == "grey"  # everything else stays as derived


def test_large_images_get_a_larger_input_candidate(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", grey_texture(300, 300), good=6, bad=6)
    cands = _candidates(ds)
    assert cands["derived"].config.preprocess.size == (160, 160)
    assert cands["larger-input"].changes == {"preprocess.size": (224, 224)}


def test_a_borderline_large_image_tries_the_whole_image_against_tiles(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", grey_texture(640, 640), good=4, bad=4)
    cands = _candidates(ds)
    assert cands["derived"].config.preprocess.tile == (128, 128)
    whole = cands["whole-image"]
    assert whole.config.preprocess.tile is None and whole.changes["preprocess.tile"] is None
    assert whole.config.preprocess.size == (160, 160) and whole.config.augment.rot90 == 0.5  # square: quarter turns
    assert "borderline" in whole.reason


def test_a_borderline_mid_size_image_tries_tiles(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", grey_texture(400, 400), good=4, bad=4)
    cands = _candidates(ds)
    assert cands["derived"].config.preprocess.tile is None
    assert cands["tiles"].config.preprocess.tile == (128, 128) and cands["tiles"].config.preprocess.size == (256, 256)


def test_long_strips_keep_their_tiles_and_only_widen(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", grey_texture(64, 1024), good=4, bad=4)
    assert list(_candidates(ds)) == ["derived", "wider"]


def test_a_candidate_never_changes_an_explicit_key(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", grey_texture(200, 200), good=6, bad=6)
    assert list(_candidates(ds, "train.width=0.5")) == ["derived", "smaller-input"]
    assert list(_candidates(ds, "preprocess.size=[96,96]")) == ["derived", "wider"]
    assert list(_candidates(ds, "preprocess.size=[96,96]", "train.width=1.0")) == ["derived"]


# --- the search, on a tiny dataset and a fake clock ---------------------------------------------------


# Explicit keys keep each training tiny (a 32 px tinycnn); width and nothing else is left to the search.
FAST = ["train.threads=1", "preprocess.size=[32,32]", "train.model=tinycnn", "train.lr=0.01",
        "train.batch_size=16", "train.ema=0", "augment.strength=0"]


@pytest.fixture(scope="module")
def search_ds(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    ds = make_simple_dataset(tmp_path_factory.mktemp("search") / "ds", per_class=100, recipes=1, size=40)
    assert len(ds.split("val")) == SEARCH_MIN_VAL  # just enough validation images to search
    return ds


def _cfg(tmp_path: Path, *extra: str) -> Any:
    return load_config(None, [f"workdir={tmp_path / 'work'}", *FAST, *extra])


def _console() -> Console:
    return Console(record=True, width=300)


@pytest.mark.slow
def test_the_search_trains_each_candidate_as_a_child_run_and_continues_the_best(
        search_ds: Dataset, tmp_path: Path) -> None:
    from lineguard import tracking
    from lineguard.train import reproduce

    config = _cfg(tmp_path, "train.budget_s=100", "train.max_epochs=5")
    console = _console()
    result = train(config, search_ds, progress=False, console=console, clock=TickClock())
    search = result.search
    assert search is not None and search["note"] == ""
    names = [c["name"] for c in search["candidates"]]
    assert names == ["derived", "wider"]
    assert all(c["status"] == "trained" and c["epochs"] >= SEARCH_MIN_EPOCHS for c in search["candidates"])
    # 25 % of 100 s split over two candidates; each plans its schedule for its own share
    assert search["per_candidate_s"] == pytest.approx(12.5)
    best = max(search["candidates"], key=lambda c: (c["val_balanced_accuracy"], -c["val_loss"]))
    assert search["chosen"] == best["name"]
    assert "search: chose" in console.export_text()

    # recorded: recipe.json lists the candidates with their val balanced accuracy; each is a child run
    assert result.run_id is not None
    recipe = json.loads(tracking.read_artifact(config, result.run_id, "recipe.json"))
    assert [(c["name"], c["val_balanced_accuracy"]) for c in recipe["search"]["candidates"]] == [
        (c["name"], c["val_balanced_accuracy"]) for c in search["candidates"]]
    for cand in search["candidates"]:
        child = tracking.load_run(config, cand["run_id"])
        assert child.tags["mlflow.parentRunId"] == result.run_id
        assert child.tags["lineguard.kind"] == "search_candidate"
        assert child.metrics["final_val_balanced_accuracy"] == pytest.approx(cand["val_balanced_accuracy"])
    parent = tracking.load_run(config, result.run_id)
    assert parent.params["search.chosen"] == search["chosen"]

    # the run's config holds the chosen recipe and its schedule: reproduce trains it without searching again
    recorded = tracking.load_run_config(config, result.run_id)
    chosen_width = 1.5 if search["chosen"] == "wider" else 1.0
    assert recorded.train.width == chosen_width and result.config.train.width == chosen_width
    assert recorded.train.budget_s is None and recorded.train.epochs == len(result.history)
    again = reproduce(config, result.run_id, progress=False, console=Console(quiet=True))
    assert again.new_run_id is not None
    assert again.max_abs_difference <= 1e-6, again.differences
    rerun = json.loads(tracking.read_artifact(config, again.new_run_id, "recipe.json"))
    assert "search" not in rerun
    children = tracking.list_runs(config, filter_string=f"tags.mlflow.parentRunId = '{again.new_run_id}'")
    assert children == []


def test_an_explicit_epoch_count_turns_the_search_off(search_ds: Dataset, tmp_path: Path) -> None:
    result = train(_cfg(tmp_path, "train.epochs=1"), search_ds, track=False, progress=False,
                   console=Console(quiet=True), clock=TickClock())
    assert result.search is None and result.config.train.width == 1.0


def test_search_off_trains_the_derived_recipe_only(search_ds: Dataset, tmp_path: Path) -> None:
    result = train(_cfg(tmp_path, "train.search=off", "train.budget_s=100", "train.max_epochs=1"), search_ds,
                   track=False, progress=False, console=Console(quiet=True), clock=TickClock())
    assert result.search is None


def test_too_few_validation_images_fall_back_to_one_recipe_with_a_note(tmp_path: Path) -> None:
    from lineguard import tracking

    ds = make_simple_dataset(tmp_path / "small", per_class=20, recipes=1, size=40)
    config = _cfg(tmp_path, "train.budget_s=100", "train.max_epochs=1")
    console = _console()
    result = train(config, ds, progress=False, console=console, clock=TickClock())
    assert result.search is not None and result.search["candidates"] == []
    note = result.search["note"]
    assert "candidate search skipped: 8 validation images are too few" in note
    assert note in " ".join(console.export_text().split())
    assert result.run_id is not None
    assert tracking.load_run(config, result.run_id).tags["lineguard.search_note"] == note
    assert json.loads(tracking.read_artifact(config, result.run_id, "recipe.json"))["search"]["note"] == note


def test_a_budget_too_small_for_the_candidates_falls_back_to_the_derived_recipe(
        search_ds: Dataset, tmp_path: Path) -> None:
    # 30 s: each of two candidates gets 3.75 s, fewer than SEARCH_MIN_EPOCHS one-second epochs
    config = _cfg(tmp_path, "train.budget_s=30", "train.max_epochs=8")
    console = _console()
    result = train(config, search_ds, track=False, progress=False, console=console, clock=TickClock())
    search = result.search
    assert search is not None and search["chosen"] == "derived"
    assert f"affords fewer than {SEARCH_MIN_EPOCHS} epochs" in search["note"]
    assert [c["status"].split(":")[0] for c in search["candidates"]] == ["dropped"]  # the search stopped there
    assert "candidate search skipped" in console.export_text()
    assert result.config.train.width == 1.0 and len(result.history) == 8  # the derived recipe, on the rest


# --- budgets too small to train anything -----------------------------------------------------------


def test_a_first_epoch_that_overruns_the_budget_is_one_clear_error(search_ds: Dataset, tmp_path: Path) -> None:
    with pytest.raises(BudgetTooSmall, match=r"train\.budget_s=2 s is too small to train anything: the first epoch "
                                             r"took 1\.0 s .*set train\.budget_s to at least \d+ s") as info:
        train(_cfg(tmp_path, "train.budget_s=2", "train.search=off"), search_ds, track=False, progress=False,
              console=Console(quiet=True), clock=TickClock())
    assert info.value.epoch_s == 1.0 and "\n" not in str(info.value)


def test_a_budget_spent_by_decoding_is_one_clear_error(search_ds: Dataset, tmp_path: Path) -> None:
    with pytest.raises(BudgetTooSmall, match=r"train\.budget_s=0\.5 s is too small to train anything: profiling "
                                             r"and decoding the images alone took"):
        train(_cfg(tmp_path, "train.budget_s=0.5"), search_ds, track=False, progress=False,
              console=Console(quiet=True), clock=TickClock())


def test_the_budget_plans_the_epochs_from_the_measured_first_one(search_ds: Dataset, tmp_path: Path) -> None:
    """fit on the fake clock: one tick to start, one per epoch; 95 % of 10 s after 2 s spent = 7 more epochs."""
    from lineguard import models
    from lineguard.train import preprocess_params

    config = _cfg(tmp_path, "train.budget_s=10", "train.max_epochs=50", "train.patience=50")
    data = prepare_data(search_ds, preprocess_params(config))
    model = models.create_model("tinycnn", num_classes=2, width=0.5)
    clock = TickClock()
    result = fit(config=config, model=model, data=data, t_start=clock(), clock=clock)
    assert len(result.history) == 8 and result.config.train.epochs == 8
    assert result.config.train.budget_s is None and result.config.train.patience == 50
