"""Output monitoring: a known shift of the scores or the reject rate is found, the same distribution stays quiet,
and a line with fewer defects than the validation split is not mistaken for a shift."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from lineguard.monitor import MonitorError
from lineguard.monitor.outputs import (
    compare_to_previous,
    compare_to_reference,
    estimate_defect_share,
    output_report,
    two_proportion_test,
    weighted_ks,
    weighted_psi,
)

THRESHOLD = 0.5


def validation(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated-looking validation scores, half of them defects: good near 0, defects near 1."""
    rng = np.random.default_rng(seed)
    defect = np.arange(n) % 2 == 1
    scores = np.where(defect, rng.beta(12, 2, n), rng.beta(2, 12, n))
    return scores, defect


def line(
    n: int, share: float, seed: int, good: tuple[float, float] = (2, 12)
) -> tuple[np.ndarray, np.ndarray]:
    """A line's window: ``share`` defects, the good cones' scores drawn from Beta(``good``)."""
    rng = np.random.default_rng(seed)
    defect = rng.random(n) < share
    scores = np.where(defect, rng.beta(12, 2, n), rng.beta(*good, n))
    return scores, scores >= THRESHOLD


def test_the_two_proportion_test_matches_the_formula() -> None:
    assert two_proportion_test(50, 1000, 50, 1000) == (0.0, 1.0)
    z, p = two_proportion_test(80, 1000, 50, 1000)
    assert z == pytest.approx(0.03 / np.sqrt(0.065 * 0.935 * 0.002), rel=1e-9)
    assert p == pytest.approx(0.0065, abs=3e-4)
    assert two_proportion_test(0, 10, 0, 10) == (0.0, 1.0)
    with pytest.raises(MonitorError, match="frames on both sides"):
        two_proportion_test(1, 0, 1, 10)


def test_weighted_ks_with_equal_weights_is_the_plain_test() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=300), rng.normal(0.3, 1, size=500)
    d, p, n_ref = weighted_ks(a, b)
    ref = ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(ref.statistic) and n_ref == pytest.approx(300)
    assert p == pytest.approx(ref.pvalue, rel=0.2)
    # weights count: putting all weight on the upper half of the reference moves its distribution
    d2, _, n_half = weighted_ks(a, a, np.where(a > np.median(a), 1.0, 0.0))
    assert d2 == pytest.approx(0.5, abs=0.01) and n_half == pytest.approx(150)
    with pytest.raises(MonitorError, match="weights"):
        weighted_ks(a, b, -np.ones(300))


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(size=2000)
    assert weighted_psi(ref, rng.normal(size=2000)) < 0.02
    assert weighted_psi(ref, rng.normal(1.0, 1.0, size=2000)) > 0.25


def test_the_defect_share_of_a_line_is_recovered_from_its_scores() -> None:
    ref, defect = validation(2000)
    window, _ = line(5000, 0.04, seed=3)
    share = estimate_defect_share(window, ref, defect)
    assert share == pytest.approx(0.04, abs=0.01)
    assert estimate_defect_share(window, ref[~defect], defect[~defect]) is None  # one class only


def test_the_same_distribution_is_quiet_against_the_reference() -> None:
    ref, defect = validation()
    for seed in range(5):
        scores, rejected = line(1000, 0.5, seed=10 + seed)  # the validation split's own mix
        out = compare_to_reference(scores, rejected, ref, defect, THRESHOLD, recipe="vanilla")
        assert out.verdict == "stable", out.message
        assert out.scores is not None and out.scores.verdict == "stable"
        assert out.reject_rate is not None and out.reject_rate.verdict == "same"
        assert out.message.startswith("vanilla: its scores look like")


def test_fewer_defects_on_the_line_than_in_validation_is_not_a_shift() -> None:
    ref, defect = validation()
    scores, rejected = line(2000, 0.03, seed=20)
    adjusted = compare_to_reference(scores, rejected, ref, defect, THRESHOLD)
    assert adjusted.verdict == "stable", adjusted.message
    assert adjusted.defect_share is not None and adjusted.defect_share["window_estimate"] == pytest.approx(
        0.03, abs=0.015
    )
    assert adjusted.defect_share["reference"] == pytest.approx(0.5)
    plain = compare_to_reference(scores, rejected, ref, defect, THRESHOLD, adjust_defect_share=False)
    assert (
        plain.verdict == "shifted" and plain.reject_rate is not None and plain.reject_rate.verdict == "lower"
    )


def test_a_known_shift_of_the_good_scores_is_found() -> None:
    ref, defect = validation(2000)
    # the good cones now score around 0.35 instead of 0.14 (a blurred camera, a new background)
    scores, rejected = line(1000, 0.03, seed=30, good=(7, 13))
    out = compare_to_reference(scores, rejected, ref, defect, THRESHOLD, recipe="chocolate")
    assert out.verdict == "shifted", out.message
    assert out.scores is not None and out.scores.verdict == "shifted" and out.scores.ks_p_value < 1e-6
    assert "moved away" in out.message
    # no few more defects explain it: the estimated share stays far from what the mean alone would say (~0.3)
    assert out.defect_share is not None and out.defect_share["window_estimate"] < 0.2


def test_a_reject_rate_the_scores_do_not_explain_is_found() -> None:
    ref, defect = validation(2000)
    scores, _ = line(1000, 0.03, seed=31)
    wrong_threshold = scores >= 0.25  # the station decides with another recipe's threshold
    out = compare_to_reference(scores, wrong_threshold, ref, defect, THRESHOLD, recipe="vanilla")
    assert out.scores is not None and out.scores.verdict == "stable"
    assert out.reject_rate is not None and out.reject_rate.verdict == "higher" and out.verdict == "shifted"
    assert "HIGHER" in out.message


def test_against_the_previous_model() -> None:
    before, before_rej = line(1000, 0.05, seed=40)
    same, same_rej = line(1000, 0.05, seed=41)
    quiet = compare_to_previous(same, same_rej, before, before_rej, recipe="vanilla", previous="version 1")
    assert quiet.verdict == "stable" and quiet.against == "previous", quiet.message
    assert "version 1" in quiet.message
    more, more_rej = line(1000, 0.15, seed=42)  # the new model rejects three times as often
    loud = compare_to_previous(more, more_rej, before, before_rej)
    assert loud.verdict == "shifted" and loud.reject_rate is not None and loud.reject_rate.verdict == "higher"
    few = compare_to_previous(same[:20], same_rej[:20], before, before_rej)
    assert few.verdict == "not enough data" and few.scores is None and "needs 100" in few.message


def test_not_enough_data_and_bad_input() -> None:
    ref, defect = validation()
    scores, rejected = line(50, 0.05, seed=50)
    out = compare_to_reference(scores, rejected, ref, defect, THRESHOLD)
    assert out.verdict == "not enough data" and out.reject_rate is None
    with pytest.raises(MonitorError, match="scores for"):
        compare_to_reference(scores, rejected[:10], ref, defect, THRESHOLD)


def test_output_report_per_recipe_against_reference_and_previous_version() -> None:
    ref, defect = validation()
    recipes_val = np.array(["vanilla"] * 300 + ["chocolate"] * 20 + ["vanilla"] * 80)
    old_v, old_r = line(600, 0.05, seed=60)
    new_v, new_r = line(600, 0.05, seed=61)
    new_c, new_c_r = line(600, 0.05, seed=62, good=(7, 13))  # chocolate's good scores moved
    scores = np.concatenate([old_v, new_v, new_c])
    rejected = np.concatenate([old_r, new_r, new_c_r])
    recipes = ["vanilla"] * 1200 + ["chocolate"] * 600
    versions = ["1"] * 600 + ["2"] * 1200
    report = output_report(
        scores,
        rejected,
        recipes,
        versions,
        current_version="2",
        threshold_for=lambda r: THRESHOLD,
        validation=(ref, defect, recipes_val),
        window=500,
    )
    assert report["available"] and report["previous_version"] == "1" and report["verdict"] == "shifted"
    rows = {r["recipe"]: r for r in report["per_recipe"]}
    assert set(rows) == {"vanilla", "chocolate"} and rows["vanilla"]["n"] == 500
    assert rows["vanilla"]["reference"]["verdict"] == "stable"
    assert rows["vanilla"]["reference"]["reference"] == "this recipe's validation scores"
    assert rows["vanilla"]["previous"]["verdict"] == "stable"
    assert rows["chocolate"]["reference"]["verdict"] == "shifted"
    assert "holds 20 items" in rows["chocolate"]["reference"]["note"]  # too few: the whole split
    assert rows["chocolate"]["previous"]["verdict"] == "not enough data"  # version 1 never made chocolate
    only_new = output_report(new_v, new_r, ["vanilla"] * 600, ["2"] * 600, current_version="2")
    assert only_new["previous_version"] is None and "reference" not in only_new["per_recipe"][0]
    assert "only the previous model" in only_new["reference_reason"]
    assert not output_report(new_v, new_r, ["vanilla"] * 600, ["2"] * 600, current_version="3")["available"]
    with pytest.raises(MonitorError, match="same length"):
        output_report(new_v, new_r, ["vanilla"], ["2"] * 600, current_version="2")


def test_the_reference_ships_the_validation_recipes_and_the_monitor_reads_them() -> None:
    from lineguard.monitor import IMAGE_SIGNALS, Reference, build_reference
    from lineguard.monitor.outputs import validation_scores

    rng = np.random.default_rng(7)
    scores, defect = validation(40)
    recipes = np.array(["vanilla", "chocolate"] * 20)
    ref = build_reference(
        rng.normal(size=(60, len(IMAGE_SIGNALS))),
        ["vanilla"] * 60,
        val_scores=scores,
        val_labels=defect.astype(int),
        val_recipes=recipes,
    )
    arrays = ref.to_arrays()
    back = Reference.from_arrays(arrays)
    assert list(back.val_recipes) == list(recipes)
    with pytest.raises(MonitorError, match="validation recipes"):
        build_reference(
            rng.normal(size=(60, len(IMAGE_SIGNALS))),
            val_scores=scores,
            val_labels=defect.astype(int),
            val_recipes=recipes[:5],
        )

    class FakeBundle:  # what validation_scores needs of a loaded bundle
        positive_index = 1

        def __init__(self, arrays: dict[str, np.ndarray]) -> None:
            self.meta = {"files": {"reference.npz": "sha256"}}
            self.arrays = arrays

        def load_arrays(self, name: str) -> dict[str, np.ndarray]:
            return self.arrays

    got = validation_scores(FakeBundle(arrays))
    assert got is not None and np.allclose(got[0], scores) and list(got[1]) == list(defect)
    assert list(got[2]) == list(recipes)
    older = validation_scores(
        FakeBundle({"val_scores": scores, "val_labels": defect.astype(int)})
    )  # class indices
    assert older is not None and list(older[1]) == list(defect) and len(older[2]) == 0
    assert validation_scores(FakeBundle({})) is None
