"""The release gate on constructed cases: pure, no models."""

from __future__ import annotations

import pytest

from lineguard.config import GateConfig
from lineguard.gate import EvalSummary, SliceSummary, decide, mcnemar_midp

POLICY = GateConfig(tolerance=0.005, max_ece=0.05, min_balanced_accuracy=0.95, min_recipe_balanced_accuracy=0.9)


def summary(name: str, wrong: dict[str, int], n_per_recipe: int = 100, ece: float = 0.01,
            parity: float | None = None, wrong_offset: dict[str, int] | None = None) -> EvalSummary:
    """Images r{i} per recipe; the model gets the first ``wrong[recipe]`` images (after an offset) wrong."""
    costs: dict[str, float] = {}
    recipes: dict[str, str] = {}
    per_recipe = {}
    for recipe, k in wrong.items():
        start = (wrong_offset or {}).get(recipe, 0)
        for i in range(n_per_recipe):
            image = f"{recipe}-{i}"
            costs[image] = 1.0 if start <= i < start + k else 0.0
            recipes[image] = recipe
        per_recipe[recipe] = SliceSummary(n_per_recipe, 1 - k / n_per_recipe, k / n_per_recipe)
    n = n_per_recipe * len(wrong)
    total_wrong = sum(wrong.values())
    overall = SliceSummary(n, 1 - total_wrong / n, total_wrong / n)
    return EvalSummary(name, overall, per_recipe, ece, parity, costs, recipes, dataset_version="v1")


def test_better_overall_but_worse_on_one_recipe_fails() -> None:
    champion = summary("champ", {"a": 2, "b": 20, "c": 20})
    candidate = summary("cand", {"a": 12, "b": 0, "c": 0})  # overall 12 vs 42 errors, recipe a 12 vs 2
    decision = decide(candidate, champion, POLICY)
    assert not decision.passed
    failed = [c.name for c in decision.checks if not c.passed]
    assert failed == ["cost[a]"]
    assert len(decision.reasons) == 1 and "recipe 'a'" in decision.reasons[0] and "McNemar" in decision.reasons[0]
    assert next(c for c in decision.checks if c.name == "cost").passed


def test_equal_within_tolerance_passes() -> None:
    champion = summary("champ", {"a": 1, "b": 1}, n_per_recipe=400)
    candidate = summary("cand", {"a": 2, "b": 1}, n_per_recipe=400)  # +1/400 = 0.0025 <= 0.005
    decision = decide(candidate, champion, POLICY)
    assert decision.passed, decision.reasons
    assert decision.reasons == []
    assert decision.champion == "champ"


def test_small_insignificant_regression_passes_and_large_one_fails() -> None:
    champion = summary("champ", {"a": 0})
    noise = summary("cand", {"a": 1})  # 1 % worse, but one image is not evidence
    assert decide(noise, champion, POLICY).passed
    worse = summary("cand", {"a": 8})
    decision = decide(worse, champion, POLICY)
    assert not decision.passed and "significant" in decision.reasons[0]


def test_without_per_image_results_point_estimates_decide() -> None:
    champion = summary("champ", {"a": 0})
    candidate = summary("cand", {"a": 1})
    stripped = EvalSummary(candidate.name, candidate.overall, candidate.per_recipe, candidate.ece)
    decision = decide(stripped, champion, POLICY)
    assert not decision.passed
    assert "no per-image results" in decision.reasons[0]


def test_first_model_uses_absolute_limits() -> None:
    good = summary("first", {"a": 2, "b": 3})
    assert decide(good, None, POLICY).passed
    weak_recipe = summary("first", {"a": 0, "b": 15})  # b at 0.85 < 0.9, overall 0.925 < 0.95
    decision = decide(weak_recipe, None, POLICY)
    assert not decision.passed
    assert {c.name for c in decision.checks if not c.passed} == {"balanced_accuracy", "balanced_accuracy[b]"}
    assert decision.champion is None


def test_calibration_and_parity_limits() -> None:
    champion = summary("champ", {"a": 1})
    miscalibrated = summary("cand", {"a": 1}, ece=0.2)
    assert [c.name for c in decide(miscalibrated, champion, POLICY).checks if not c.passed] == ["ece"]
    drifted_export = summary("cand", {"a": 1}, parity=0.05)
    decision = decide(drifted_export, champion, POLICY)
    assert not decision.passed and "disagree" in decision.reasons[0]
    assert decide(summary("cand", {"a": 1}, parity=0.0), champion, POLICY).passed


def test_new_recipe_and_different_test_sets() -> None:
    champion = summary("champ", {"a": 1})
    candidate = summary("cand", {"a": 1, "new": 30})  # a new recipe at 0.7 balanced accuracy
    decision = decide(candidate, champion, POLICY)
    assert "cost[new]" in [c.name for c in decision.checks if not c.passed]
    other = EvalSummary("cand", champion.overall, champion.per_recipe, 0.01, dataset_version="v2",
                        image_costs=champion.image_costs, image_recipes=champion.image_recipes)
    assert not decide(other, champion, POLICY).passed


def test_summary_round_trips_through_dict() -> None:
    s = summary("x", {"a": 1})
    back = EvalSummary.from_dict({**s.to_dict(), "image_costs": s.image_costs, "image_recipes": s.image_recipes})
    assert back == s
    assert decide(s, None, POLICY).to_dict()["passed"] is True


def test_mcnemar_midp() -> None:
    assert mcnemar_midp(0, 0) == 1.0
    # 10 discordant, all against A: P(X >= 10) mid-p = 0.5 * 2^-10.
    assert mcnemar_midp(10, 0) == pytest.approx(0.5 / 1024)
    assert mcnemar_midp(5, 5) == pytest.approx(0.5)
    assert mcnemar_midp(0, 10) > 0.99
