"""Label-free estimates within tolerance of the truth on simulated calibrated scores; feedback; concept drift."""

from __future__ import annotations

import numpy as np
import pytest

from lineguard.monitor import MonitorError, atc, cbpe, concept_drift, measured
from lineguard.monitor.estimate import adjust_to_prior, wilson


def _calibrated(rng: np.random.Generator, n: int, defect_share: float, sharpness: float = 3.0
                ) -> tuple[np.ndarray, np.ndarray]:
    """Scores that are calibrated by construction: labels drawn from the scores themselves."""
    latent = rng.normal(0, sharpness, n) + np.log(defect_share / (1 - defect_share))
    p = 1 / (1 + np.exp(-latent))
    y = rng.random(n) < p
    return p, y


def _true_ba(y: np.ndarray, r: np.ndarray) -> float:
    return 0.5 * ((y & r).sum() / max(y.sum(), 1) + (~y & ~r).sum() / max((~y).sum(), 1))


def test_cbpe_is_within_two_points_on_1000_frame_windows() -> None:
    rng = np.random.default_rng(0)
    errors, covered = [], 0
    for _ in range(40):
        p, y = _calibrated(rng, 1000, 0.3)
        r = p >= 0.5
        est = cbpe(p, r, seed=1)
        errors.append(est.balanced_accuracy - _true_ba(y, r))
        lo, hi = est.balanced_accuracy_interval
        covered += lo <= _true_ba(y, r) <= hi
    # A model of ~85 % balanced accuracy: the window's own sampling noise is ~1 point, so the
    # estimate is within 2 points on nearly every window and never far off.
    assert np.mean(np.abs(errors) < 0.02) >= 0.95 and np.max(np.abs(errors)) < 0.03
    assert abs(np.mean(errors)) < 0.005  # unbiased
    assert covered >= 34  # a 95 % interval covers about 38 of 40


def test_cbpe_rates_match_expected_counts() -> None:
    p = np.array([0.9, 0.8, 0.1, 0.2])
    r = np.array([True, True, False, False])
    est = cbpe(p, r)
    assert est.confusion == pytest.approx({"tp": 1.7, "fp": 0.3, "tn": 1.7, "fn": 0.3})
    assert est.escape_rate == pytest.approx(0.3 / 2.0) and est.false_reject_rate == pytest.approx(0.3 / 2.0)
    assert est.balanced_accuracy == pytest.approx(0.85)


def test_prior_adjustment_recovers_a_label_shift() -> None:
    """Scores calibrated at a 30 % defect share, applied where it is 60 %: EM finds the new share."""
    rng = np.random.default_rng(1)
    # class-conditional score model: latent ~ N(+-2, 1.5); calibrated posterior for prior pi
    def posterior(latent: np.ndarray, pi: float) -> np.ndarray:
        lr = np.exp((latent * 4.0) / (1.5**2))  # N(2,s)/N(-2,s) likelihood ratio
        return pi * lr / (pi * lr + 1 - pi)

    y = rng.random(20_000) < 0.6
    latent = np.where(y, rng.normal(2, 1.5, y.size), rng.normal(-2, 1.5, y.size))
    p_old = posterior(latent, 0.3)
    adjusted, prior = adjust_to_prior(p_old, 0.3)
    assert prior == pytest.approx(0.6, abs=0.02)
    assert np.allclose(adjusted, posterior(latent, prior), atol=1e-3)


def test_atc_is_close_on_in_distribution_windows() -> None:
    rng = np.random.default_rng(2)
    vp, vy = _calibrated(rng, 2000, 0.3)
    p, y = _calibrated(rng, 1000, 0.3)
    r = p >= 0.5
    est = atc(p, r, vp, vy, vp >= 0.5)
    assert abs(est.balanced_accuracy - _true_ba(y, r)) < 0.04


def test_measured_counts_and_wilson() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    r = np.array([1, 1, 0, 0, 0, 0, 0, 1], bool)
    m = measured(y, r)
    assert m.escape_rate == pytest.approx(1 / 3) and m.false_reject_rate == pytest.approx(1 / 5)
    assert m.balanced_accuracy == pytest.approx(1 - 0.5 * (1 / 3 + 1 / 5))
    lo, hi = wilson(1, 3)
    assert lo < 1 / 3 < hi and wilson(0, 0) == (0.0, 1.0)


def test_concept_drift_flagged_only_when_feedback_contradicts_in_distribution_scores() -> None:
    rng = np.random.default_rng(3)
    p, y = _calibrated(rng, 400, 0.3)
    r = p >= 0.5
    assert not concept_drift(p, r, y).flagged
    # The definition changed: a quarter of the cones the model (rightly, before) called good are now defects.
    y2 = y | ((~y) & (rng.random(400) < 0.25))
    flag = concept_drift(p, r, y2)
    assert flag.flagged and flag.accuracy < flag.expected_accuracy - 0.05
    assert not concept_drift(p, r, y2, input_drift=True).flagged
    assert not concept_drift(p[:10], r[:10], y2[:10]).flagged


def test_bad_input_is_named() -> None:
    with pytest.raises(MonitorError, match=r"within 0\.\.1"):
        cbpe(np.array([1.5]), np.array([True]))
    with pytest.raises(MonitorError, match="one length"):
        cbpe(np.array([0.5, 0.5]), np.array([True]))
    with pytest.raises(MonitorError, match="train_prior"):
        cbpe(np.array([0.5]), np.array([True]), adjust_prior=True)
    est = cbpe(np.array([0.5]), np.array([True])).untrusted("drift")
    assert not est.trustworthy and est.to_dict()["reason"] == "drift"
