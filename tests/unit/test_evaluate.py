"""Metric functions against hand-computed values, degenerate inputs, thresholds and calibration."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from lineguard.edge import Decision
from lineguard.evaluate import metrics as m

# 4 good, 4 bad; threshold 0.5 -> good: 0.1 0.2 0.3 rejected 0.6 | bad: 0.4 missed, 0.7 0.8 0.9 caught.
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
SCORES = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])


def test_confusion_and_rates_by_hand() -> None:
    cm = m.confusion(LABELS, m.decisions(SCORES, 0.5))
    assert (cm.tn, cm.fp, cm.fn, cm.tp) == (3, 1, 1, 3)
    assert cm.as_matrix() == [[3, 1], [1, 3]]
    r = m.rates(cm)
    assert r["accuracy"] == pytest.approx(6 / 8)
    assert r["balanced_accuracy"] == pytest.approx(0.75)
    assert r["precision_bad"] == pytest.approx(0.75)
    assert r["recall_bad"] == pytest.approx(0.75)
    assert r["f1_bad"] == pytest.approx(0.75)
    assert r["false_reject_rate"] == pytest.approx(0.25)  # a good item rejected
    assert r["escape_rate"] == pytest.approx(0.25)  # a defect passed


def test_balanced_accuracy_differs_from_accuracy_on_imbalanced_data() -> None:
    y = np.array([0] * 8 + [1] * 2)
    s = np.array([0.1] * 8 + [0.9, 0.1])
    r = m.rates(m.confusion(y, m.decisions(s, 0.5)))
    assert r["accuracy"] == pytest.approx(0.9)
    assert r["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)


def test_expected_cost_and_item_costs_weight_errors() -> None:
    cm = m.confusion(LABELS, m.decisions(SCORES, 0.5))
    assert m.expected_cost(cm, false_reject=1, missed_defect=5) == pytest.approx((1 + 5) / 8)
    costs = m.item_costs(LABELS, m.decisions(SCORES, 0.5), false_reject=1, missed_defect=5)
    assert costs.tolist() == [0, 0, 0, 1, 5, 0, 0, 0]


def test_roc_auc_by_hand_and_against_sklearn() -> None:
    # Of the 16 (bad, good) pairs only (0.4, 0.6) is mis-ordered: AUC = 15/16.
    assert m.roc_auc(LABELS, SCORES) == pytest.approx(15 / 16)
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = np.round(np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1), 2)  # rounded: many ties
    assert m.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert m.pr_auc(y, s) == pytest.approx(average_precision_score(y, s))
    fpr, tpr, _ = m.roc_curve(y, s)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.trapezoid(tpr, fpr) == pytest.approx(m.roc_auc(y, s))


def test_degenerate_inputs_give_nan_and_notes_not_errors() -> None:
    # One class only.
    y, s = np.array([0, 0, 0]), np.array([0.1, 0.7, 0.2])
    assert math.isnan(m.roc_auc(y, s)) and math.isnan(m.pr_auc(y, s))
    summary = m.summarise(y, s, 0.5, n_resamples=20)
    assert summary["balanced_accuracy"] is None
    assert summary["recall_bad"] is None
    assert summary["false_reject_rate"] == pytest.approx(1 / 3)
    assert any("no bad items" in n for n in summary["notes"])
    # Empty slice.
    empty = m.summarise([], [], 0.5, n_resamples=20)
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["ece"] is None
    assert "empty slice" in empty["notes"][0]
    # All correct.
    perfect = m.summarise([0, 1], [0.0, 1.0], 0.5, n_resamples=20)
    assert perfect["balanced_accuracy"] == 1.0 and perfect["ece"] == 0.0
    assert perfect["ci"]["balanced_accuracy"] == [1.0, 1.0]
    assert m.choose_threshold([1, 1], [0.3, 0.9]).note
    assert m.fit_temperature([1.0, 2.0], [1, 1]) == 1.0
    assert m.detection_rates([], [], 0.5, []) == {}


def test_per_slice_and_detection_rates() -> None:
    recipes = np.array(["a", "a", "b", "b", "a", "a", "b", "b"])
    kinds = np.array(["", "", "", "", "no_topping", "no_topping", "crack", "crack"])
    slices = m.per_slice(LABELS, SCORES, 0.5, recipes)
    assert set(slices) == {"a", "b"}
    # Recipe a: good 0.1, 0.2 passed; bad 0.4 missed, 0.7 caught.
    assert slices["a"]["balanced_accuracy"] == pytest.approx(0.75)
    rates = m.detection_rates(LABELS, SCORES, 0.5, kinds, n_resamples=50)
    assert rates["no_topping"]["detection_rate"] == pytest.approx(0.5)
    assert rates["crack"]["detection_rate"] == pytest.approx(1.0)
    assert rates["crack"]["n"] == 2


def test_ece_by_hand() -> None:
    # Two bins at 0.25 and 0.75 with 50 % defects each: |0.25 - 0.5| = |0.75 - 0.5| = 0.25.
    y = np.array([0, 1, 0, 1])
    s = np.array([0.25, 0.25, 0.75, 0.75])
    assert m.expected_calibration_error(y, s, bins=2) == pytest.approx(0.25)
    rel = m.reliability(y, s, bins=2)
    assert rel["count"] == [2.0, 2.0] and rel["fraction_bad"] == [0.5, 0.5]


def test_threshold_minimises_cost_and_moves_with_asymmetric_costs() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(500), np.ones(500)].astype(int)
    s = np.clip(np.r_[rng.normal(0.35, 0.12, 500), rng.normal(0.65, 0.12, 500)], 0, 1)
    equal = m.choose_threshold(y, s, 1.0, 1.0)
    missed_dear = m.choose_threshold(y, s, 1.0, 10.0)  # escapes cost 10x: reject more
    waste_dear = m.choose_threshold(y, s, 10.0, 1.0)
    assert missed_dear.threshold < equal.threshold < waste_dear.threshold
    # The chosen threshold is optimal: no other cut on a grid does better.
    for choice, fr, md in ((equal, 1, 1), (missed_dear, 1, 10), (waste_dear, 10, 1)):
        grid_best = min(m.expected_cost(m.confusion(y, m.decisions(s, t)), fr, md) for t in np.linspace(0, 1, 501))
        got = m.expected_cost(m.confusion(y, m.decisions(s, choice.threshold)), fr, md)
        assert got == pytest.approx(choice.expected_cost)
        assert got <= grid_best + 1e-12


def test_threshold_on_separable_data_is_bayes_point_inside_the_gap() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.8, 0.9])
    assert m.choose_threshold(y, s).threshold == pytest.approx(0.5)
    assert m.choose_threshold(y, s, 1.0, 3.0).threshold == pytest.approx(0.25)  # fr / (fr + md)
    # Bayes point outside the gap: the closest point of the gap is taken, never a score itself.
    t = m.choose_threshold(np.array([0, 0, 1, 1]), np.array([0.6, 0.65, 0.8, 0.9])).threshold
    assert 0.65 < t <= 0.8


def test_per_recipe_thresholds_fall_back_with_few_samples() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(60), np.ones(60), [0, 1]].astype(int)
    s = np.r_[rng.uniform(0, 0.3, 30), rng.uniform(0, 0.6, 30), rng.uniform(0.4, 1, 30), rng.uniform(0.7, 1, 30),
              [0.2, 0.8]]
    recipes = np.array(["a"] * 30 + ["b"] * 30 + ["a"] * 30 + ["b"] * 30 + ["rare", "rare"])
    th = m.choose_thresholds(y, s, recipes, min_per_class=10)
    assert set(th.per_recipe) == {"a", "b"}
    assert any("rare" in n for n in th.notes)
    assert Decision(th.default, th.per_recipe).thresholds_for(["a", "rare"]).tolist() == [th.per_recipe["a"], th.default]
    assert m.choose_thresholds(y, s, recipes, per_recipe=False).per_recipe == {}


def test_temperature_scaling_lowers_ece_on_overconfident_scores() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    y = rng.integers(0, 2, n)
    true_margin = (2 * y - 1) * 1.0 + rng.normal(0, 1.5, n)  # calibrated: p = sigmoid(true margin * k)
    overconfident = true_margin * 4.0
    t = m.fit_temperature(overconfident[: n // 2], y[: n // 2])
    assert t > 2.0
    before = m.expected_calibration_error(y[n // 2 :], m.apply_temperature(overconfident[n // 2 :], 1.0))
    after = m.expected_calibration_error(y[n // 2 :], m.apply_temperature(overconfident[n // 2 :], t))
    assert after < before / 2


def test_margins_and_logit_round_trip() -> None:
    logits = np.array([[0.0, 2.0], [1.0, -1.0]])
    z = m.margins_from_logits(logits)
    assert z.tolist() == [2.0, -2.0]
    p = m.sigmoid(z)
    np.testing.assert_allclose(m.logit(p), z, atol=1e-9)
    np.testing.assert_allclose(p, np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1))


def test_bootstrap_ci_is_seeded_and_contains_the_point_estimate() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.clip(y * 0.4 + rng.random(300) * 0.6, 0, 1)
    point = m.rates(m.confusion(y, m.decisions(s, 0.5)))["balanced_accuracy"]
    lo, hi = m.bootstrap_ci(y, s, 0.5, "balanced_accuracy", n_resamples=500, seed=7)
    assert lo < point < hi
    assert hi - lo < 0.2
    assert (lo, hi) == m.bootstrap_ci(y, s, 0.5, "balanced_accuracy", n_resamples=500, seed=7)
    auc_lo, auc_hi = m.bootstrap_ci(y, s, 0.5, lambda yy, ss, _t: m.roc_auc(yy, ss), n_resamples=200)
    assert auc_lo < m.roc_auc(y, s) < auc_hi


def test_describe_test_set_warns() -> None:
    y = np.array([0] * 30 + [1] * 10 + [0] * 60 + [1] * 60)
    r = np.array(["small"] * 40 + ["big"] * 120)
    counts, warnings = m.describe_test_set(y, r, min_per_recipe=50)
    assert counts["small"] == {"good": 30, "bad": 10}
    assert any("'small' has only 40" in w for w in warnings)
    assert any("'small' test images are imbalanced" in w for w in warnings)
    assert not any("'big'" in w for w in warnings)
    assert m.describe_test_set([], [], 50)[1]


# --- evaluate_predictions, report and behaviour with a fake scorer (no torch, no MLflow) ----------


class DotScorer:
    """A hand-written 'model' for the conftest discs: good items carry coloured dots, i.e. many sharp
    edges; a bare disc has only its rim. Margin = evidence for bad."""

    name = "dots"
    classes = ("good", "bad")

    def __init__(self) -> None:
        from lineguard.preprocess import PreprocessParams

        self.preprocess = PreprocessParams(size=(32, 32))

    def margins(self, images: list[np.ndarray]) -> np.ndarray:
        edges = np.array([
            int((np.abs(np.diff(im.astype(np.int16), axis=1)).max(axis=2) > 40).sum()) for im in images
        ])
        return (130.0 - edges) / 25.0


def test_evaluate_with_report_and_bundle_dict(tmp_path, simple_dataset) -> None:
    from lineguard.config import load_config
    from lineguard.evaluate import evaluate

    cfg = load_config(None, [f"workdir={tmp_path}", "evaluate.bootstrap=100", "evaluate.min_test_per_recipe=50"])
    result = evaluate("dots", simple_dataset, cfg, out=str(tmp_path / "rep"), log=False, scorer=DotScorer())
    assert result.balanced_accuracy is not None and result.balanced_accuracy >= 0.9
    assert set(result.metrics["per_recipe"]) == {"recipe_0", "recipe_1"}
    assert result.metrics["per_defect"]["missing_topping"]["n"] == 8
    assert any("'recipe_0' has only 8 test images" in w for w in result.warnings)  # 8 < 50: CI warning
    block = {"decision": result.decision.to_dict(), "evaluation": result.headline()}
    assert result.decision_source == "val" and block["decision"]["fitted_on"] == "val"
    assert {"default_threshold", "per_recipe", "cost", "temperature", "rule"} <= set(block["decision"])
    assert 0 <= block["decision"]["default_threshold"] <= 1
    assert block["evaluation"]["balanced_accuracy"] == result.balanced_accuracy
    import json

    json.dumps(block)  # JSON-ready: no numpy scalars, no NaN objects
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "data:image/png;base64," in html and "Per recipe" in html and "Invariance" in html
    for name in ("report.md", "evaluation.json", "curves.png", "reliability.png", "worst.png", "scores.png"):
        assert (tmp_path / "rep" / name).is_file()
    assert result.behaviour["invariance"] and "recipe_0" in result.behaviour["minimum_function"]
    summary = result.summary()
    assert summary.image_costs is not None and len(summary.image_costs) == 16


def _preds(margins: Any, labels: Any) -> Any:
    """Predictions of one recipe 'r' with these margins and labels (1 = defect)."""
    from lineguard.evaluate import Predictions

    n = len(labels)
    return Predictions(np.array([f"i{k}" for k in range(n)]), np.array([""] * n), np.asarray(labels),
                       np.array(["r"] * n), np.array(["" if y == 0 else "d" for y in labels]),
                       np.asarray(margins, dtype=float))


def test_evaluate_predictions_fits_on_val_only() -> None:
    from lineguard.config import EvaluateConfig
    from lineguard.evaluate import evaluate_predictions

    val = _preds([-4, -3, -2, 2, 3, 4], [0, 0, 0, 1, 1, 1])
    test = _preds([-4, 5, 6, 7], [0, 0, 1, 1])  # a confident mistake on test must not move the threshold
    cfg = EvaluateConfig(bootstrap=0, calibrate=False, min_threshold_samples=1)
    result = evaluate_predictions(val, test, cfg)
    assert result.decision.default_threshold == pytest.approx(0.5)
    assert result.metrics["overall"]["false_reject_rate"] == pytest.approx(0.5)
    # One-class test split: metrics that need both classes are None, nothing raises.
    one_class = evaluate_predictions(val, _preds([-3, -2], [0, 0]), cfg)
    assert one_class.balanced_accuracy is None and one_class.metrics["overall"]["notes"]


def test_the_default_decision_weighs_both_classes_the_same_not_the_val_mix() -> None:
    """``fit_decision`` with the default config (evaluate.cost.defect_rate 0.5) fits the threshold that
    maximises val balanced accuracy on a val split of a quarter defects; ``defect_rate: null`` fits the one
    for that mix, which passes more defects."""
    from lineguard.config import EvaluateConfig
    from lineguard.evaluate.evaluation import fit_decision

    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(600), np.ones(200)].astype(int)
    margins = np.r_[rng.normal(-1.0, 1.2, 600), rng.normal(1.0, 1.2, 200)]
    val = _preds(margins, labels)

    def balanced(decision: Decision) -> float:
        rejects = decision.rejects(decision.scores_from_margins(margins), val.recipes)
        return float(m.rates(m.confusion(labels, rejects.astype(int)))["balanced_accuracy"])

    default = fit_decision(val, EvaluateConfig(calibrate=False))
    mix = fit_decision(val, EvaluateConfig(calibrate=False, cost={"defect_rate": None}))
    best = max(balanced(Decision(default_threshold=float(t))) for t in np.linspace(0.01, 0.99, 981))
    assert EvaluateConfig().cost.defect_rate == 0.5
    assert balanced(default) >= best - 1e-9
    assert balanced(mix) < balanced(default) - 0.02
    assert mix.default_threshold > default.default_threshold  # the mix's threshold rejects less
    assert any("defect rate of 50.0%" in note for note in default.notes)


def test_perturbations_and_behaviour_checks() -> None:
    from lineguard.evaluate.behaviour import behaviour_checks, brighten, shift

    img = np.zeros((10, 10, 3), np.uint8)
    img[4, 4] = 200
    assert shift(img, 0, 2)[4, 6, 0] == 200 and shift(img, 1, 0)[5, 4, 0] == 200
    assert brighten(img, 1.1)[4, 4, 0] == 220 and brighten(np.full((2, 2, 3), 250, np.uint8), 1.1).max() == 255

    class Brightness:
        name, classes = "b", ("good", "bad")
        preprocess = None

        def margins(self, images: list[np.ndarray]) -> np.ndarray:
            return np.array([float(im.mean()) - 100.0 for im in images])

    images = [np.full((8, 8, 3), v, np.uint8) for v in (50, 95, 105, 150)]
    base = np.array([0, 0, 1, 1])
    out = behaviour_checks(Brightness(), images, base, ["r"] * 4, [0, 0, 1, 1], Decision(0.5))  # type: ignore[arg-type]
    # +10 % brightness turns 95 into 104.5 (flip); -10 % turns 105 into 94.5 (flip): 1 of 4 each.
    assert out["invariance"]["brightness +10%"]["flip_rate"] == pytest.approx(0.25)
    assert out["invariance"]["brightness -10%"]["flipped"] == 1
    assert out["minimum_function"]["r"]["passed"] and not out["passed"]


# --- learning curve: the fit on synthetic numbers -------------------------------------------------


def test_learning_curve_fit_recovers_a_saturating_curve() -> None:
    from lineguard.evaluate.learning_curve import advice, fit_curve, images_for_gain, saturating

    n = np.array([10, 25, 50, 100, 200, 400], dtype=float)
    acc = saturating(n, 0.98, 0.6, 0.7)
    fit = fit_curve(n, acc)
    assert fit.method == "saturating"
    assert fit.a == pytest.approx(0.98, abs=0.01) and fit.c == pytest.approx(0.7, abs=0.05)
    need = images_for_gain(fit, 100, gain=0.01)
    assert need is not None and need > 100
    assert saturating(need, 0.98, 0.6, 0.7) == pytest.approx(saturating(100, 0.98, 0.6, 0.7) + 0.01, abs=2e-3)
    assert "more training images" in advice(fit, 100, float(acc[3]))
    # Already at the ceiling: the curve says more data will not buy a point.
    assert images_for_gain(fit, 400, gain=0.05) is None
    assert "unlikely" in advice(fit, 400, float(acc[-1]), gain=0.05)


def test_learning_curve_fit_fallbacks() -> None:
    from lineguard.evaluate.learning_curve import advice, analyse, fit_curve

    two = fit_curve([50, 100], [0.90, 0.92])
    assert two.method == "log-linear" and two.slope == pytest.approx(0.02)
    assert fit_curve([100, 100], [0.9, 0.91]).method == "none"
    assert advice(fit_curve([50], [0.9]), 50, 0.9) == "not enough points to say"
    points = [
        {"train_images": n * 2, "train_per_recipe": {"a": n, "b": n}, "balanced_accuracy": acc,
         "per_recipe": {"a": acc, "b": 1.0}}
        for n, acc in ((10, 0.8), (20, 0.86), (40, 0.9), (80, 0.92))
    ]
    fits, notes = analyse(points)
    assert set(fits) == {"a", "b", "overall"}
    assert "100 %" in notes["b"]
    assert "more training images" in notes["a"] or "unlikely" in notes["a"]


def test_subset_train_keeps_val_and_test(simple_dataset) -> None:
    from lineguard.evaluate.learning_curve import subset_train

    sub = subset_train(simple_dataset, 0.25, seed=0)
    full_train = simple_dataset.split("train")
    part = sub.split("train")
    assert 0 < len(part) < len(full_train)
    assert set(part.groupby(["recipe", "label"]).size().index) == set(full_train.groupby(["recipe", "label"]).size().index)
    assert sub.split("test")["image_id"].tolist() == simple_dataset.split("test")["image_id"].tolist()
    assert sub.version != simple_dataset.version
    assert subset_train(simple_dataset, 1.0, 0) is simple_dataset


def test_temperature_on_separable_validation_stays_finite() -> None:
    # Perfectly separated: hard-label NLL would push T to its lower bound (certainty).
    margins = np.r_[np.linspace(-12, -6, 50), np.linspace(6, 12, 50)]
    labels = np.r_[np.zeros(50), np.ones(50)].astype(int)
    t = m.fit_temperature(margins, labels)
    assert 0.5 < t < 20
    p = m.apply_temperature(margins, t)
    assert 0.9 < p[labels == 1].mean() < 0.999


def test_vectorised_bootstrap_agrees_with_the_generic_one() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 400)
    s = np.clip(y * 0.35 + rng.random(400) * 0.65, 0, 1)
    for name in ("balanced_accuracy", "false_reject_rate", "expected_cost", "precision_bad"):
        fast = m.bootstrap_ci(y, s, 0.5, name, n_resamples=800, seed=1)

        def slow(yy: np.ndarray, ss: np.ndarray, tt: np.ndarray, name: str = name) -> float:
            cm = m.confusion(yy, m.decisions(ss, tt))
            return m.expected_cost(cm) if name == "expected_cost" else m.rates(cm)[name]

        generic = m.bootstrap_ci(y, s, 0.5, slow, n_resamples=800, seed=1)
        assert fast == pytest.approx(generic, abs=0.02), name


def test_threshold_weighs_the_line_defect_rate_not_the_validation_mix() -> None:
    """A validation split with a quarter defects (as ingest keeps the solar cells'): counting raw errors picks
    a threshold for that mix; the default rate 0.5 picks the one that maximises balanced accuracy, what the
    balanced test split measures; a line's low rate moves it up (fewer rejects)."""
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(1500), np.ones(500)].astype(int)
    s = np.clip(np.r_[rng.normal(0.4, 0.15, 1500), rng.normal(0.6, 0.15, 500)], 0, 1)

    def balanced(t: float) -> float:
        return float(m.rates(m.confusion(y, m.decisions(s, t)))["balanced_accuracy"])

    grid_best = max(balanced(t) for t in np.linspace(0, 1, 1001))
    default = m.choose_threshold(y, s).threshold
    raw_mix = m.choose_threshold(y, s, defect_rate=None).threshold
    line = m.choose_threshold(y, s, defect_rate=0.02).threshold
    assert balanced(default) >= grid_best - 1e-9
    assert balanced(raw_mix) < grid_best - 0.02  # the mix's threshold rejects too little for balanced data
    assert default < raw_mix < line
    with pytest.raises(ValueError, match="defect_rate"):
        m.choose_threshold(y, s, defect_rate=1.0)
