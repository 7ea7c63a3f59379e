"""The Decision record: the one rule from evaluation to the edge, and its bundle block."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lineguard.edge import Cost, Decision, DecisionError
from lineguard.edge.decision import RULE
from lineguard.edge.predictor import scores_from_logits

D = Decision(0.5, {"vanilla": 0.3, "chocolate": 0.7}, temperature=2.0, cost=Cost(1.0, 3.0), fitted_on="val",
             notes=("recipe 'rare' kept the default",))


def test_the_recipe_threshold_else_the_default() -> None:
    assert D.threshold_for("vanilla") == 0.3 and D.threshold_for("chocolate") == 0.7
    assert D.threshold_for("unknown") == 0.5 and D.threshold_for(None) == 0.5
    assert D.thresholds_for(["vanilla", "x", None, np.str_("chocolate")]).tolist() == [0.3, 0.5, 0.5, 0.7]


def test_reject_when_the_score_reaches_the_threshold() -> None:
    scores = np.array([0.3, 0.2999, 0.5, 0.69, 0.7])
    recipes = ["vanilla", "vanilla", "x", "chocolate", "chocolate"]
    assert D.rejects(scores, recipes).tolist() == [True, False, True, False, True]


def test_margin_scores_are_the_edge_scores() -> None:
    """sigmoid(margin / T) on margins is softmax(logits / T)[positive] on the logits the edge sees."""
    logits = np.random.default_rng(0).normal(0, 4, (50, 2))
    margins = logits[:, 1] - logits[:, 0]
    assert np.allclose(D.scores_from_margins(margins), scores_from_logits(logits, D.temperature, 1), atol=1e-12)


def test_to_dict_is_the_bundle_block_and_round_trips() -> None:
    block = D.to_dict()
    assert block == {
        "default_threshold": 0.5, "per_recipe": {"chocolate": 0.7, "vanilla": 0.3},
        "cost": {"false_reject": 1.0, "missed_defect": 3.0}, "temperature": 2.0, "rule": RULE,
        "fitted_on": "val", "notes": ["recipe 'rare' kept the default"],
    }
    assert Decision.from_dict(block) == D
    minimal = Decision.from_dict({"default_threshold": 0.4})
    assert minimal == Decision(0.4) and minimal.temperature == 1.0 and minimal.cost == Cost(1.0, 1.0)
    assert set(minimal.to_dict()) == {"default_threshold", "per_recipe", "cost", "temperature", "rule"}


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({}, "no 'default_threshold'"),
        ({"default_threshold": 1.5}, "'default_threshold' = 1.5 is outside"),
        ({"default_threshold": 0.5, "per_recipe": {"vanilla": -0.1}}, "'vanilla' = -0.1 is outside"),
        ({"default_threshold": 0.5, "temperature": 0}, "temperature 0.0 must be > 0"),
        ({"default_threshold": "0.5"}, "'default_threshold' must be a number"),
        ({"default_threshold": True}, "'default_threshold' must be a number"),
        ({"default_threshold": math.nan}, "'default_threshold' must be finite"),
        ({"default_threshold": 0.5, "per_recipe": [0.3]}, "'per_recipe' must map"),
        ({"default_threshold": 0.5, "cost": {"false_rejects": 2}}, "only 'false_reject' and 'missed_defect'"),
        ({"default_threshold": 0.5, "cost": {"missed_defect": -1}}, "'missed_defect' = -1"),
        ({"default_threshold": 0.5, "rule": "reject when score > threshold"}, "is not the rule"),
        ("0.5", "must be a JSON object"),
    ],
)
def test_a_bad_block_is_one_clear_error(block: object, message: str) -> None:
    with pytest.raises(DecisionError, match=message.replace("(", r"\(")) as err:
        Decision.from_dict(block)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_differences_name_each_setting_that_moved() -> None:
    assert D.differences(D) == []
    other = Decision(0.45, {"vanilla": 0.3}, temperature=2.0, cost=Cost(1.0, 3.0))
    assert D.differences(other) == ["default threshold 0.5000 vs 0.4500", "recipe 'chocolate' threshold 0.7000 vs 0.4500"]
