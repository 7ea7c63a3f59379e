"""Performance without labels (CBPE, ATC), measured performance from feedback, and concept drift.

**CBPE** (confidence-based performance estimation): a calibrated score ``p`` is the chance
that the cone is defective, so over a window the expected confusion matrix is
``TP = sum p [rejected]``, ``FP = sum (1 - p) [rejected]``, ``FN = sum p [accepted]``,
``TN = sum (1 - p) [accepted]``; balanced accuracy, the false-reject rate (good cones
rejected / good cones) and the escape rate (defects passed / defects) follow. The
interval draws the labels the scores imply (Bernoulli(p) per frame) and takes percentiles
of the resulting rates: how far the window's true figure may lie from the estimate when
the calibration holds. It holds while the inputs look like the reference (covariate
shift with P(defect | image) unchanged); under input drift it does not, so estimates are
marked ``trustworthy=False`` while an input alarm is active. A change of the defect rate
(label shift) also bends the calibration: ``adjust_prior=True`` re-weights the scores to the
window's defect share by EM (Saerens et al., 2002).

**ATC** (average thresholded confidence, Garg et al., 2022), for comparison: on the
validation split, find the confidence above which as many items lie as were right; the
share of window items above it estimates accuracy. Here per decision: the rejects'
threshold estimates the precision of rejects, the accepts' the share of true passes,
which gives a confusion matrix and balanced accuracy like CBPE's.

With operator feedback (true labels for some frames): :func:`measured` gives the same
rates with Wilson intervals, and :func:`concept_drift` flags a drop of feedback accuracy
below what the calibrated scores promise for those very frames while inputs are in
distribution -- the definition of a defect moved, not the camera.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lineguard.monitor.reference import MonitorError


@dataclass(frozen=True)
class Estimate:
    """Balanced accuracy, false-reject and escape rates of one window, with ``level`` intervals."""

    method: str  # "cbpe" | "atc" | "feedback"
    n: int
    balanced_accuracy: float
    false_reject_rate: float
    escape_rate: float
    balanced_accuracy_interval: tuple[float, float]
    false_reject_interval: tuple[float, float]
    escape_interval: tuple[float, float]
    confusion: dict[str, float]  # tp, fp, tn, fn (expected counts for cbpe/atc)
    defect_share: float
    trustworthy: bool = True
    reason: str = ""
    recipe: str | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("balanced_accuracy_interval", "false_reject_interval", "escape_interval"):
            d[key] = list(d[key])
        return d

    def untrusted(self, reason: str) -> Estimate:
        """The same figures marked not trustworthy, with the reason (e.g. the active input alarms)."""
        from dataclasses import replace

        return replace(self, trustworthy=False, reason=reason)


def _rates(tp: np.ndarray | float, fp: np.ndarray | float, tn: np.ndarray | float, fn: np.ndarray | float
           ) -> tuple[Any, Any, Any]:
    """(balanced accuracy, false-reject rate, escape rate); a class with no mass counts as perfect."""
    pos = np.asarray(tp) + np.asarray(fn)
    neg = np.asarray(tn) + np.asarray(fp)
    with np.errstate(invalid="ignore", divide="ignore"):
        escape = np.where(pos > 0, np.asarray(fn) / np.where(pos > 0, pos, 1), 0.0)
        false_reject = np.where(neg > 0, np.asarray(fp) / np.where(neg > 0, neg, 1), 0.0)
    return 1.0 - 0.5 * (escape + false_reject), false_reject, escape


def _check(scores: np.ndarray, rejected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(scores, np.float64)
    r = np.asarray(rejected, bool)
    if p.ndim != 1 or r.shape != p.shape:
        raise MonitorError(f"scores and decisions must be two vectors of one length, got {p.shape} and {r.shape}")
    if len(p) == 0:
        raise MonitorError("a performance estimate needs at least one frame")
    if not np.all((p >= 0) & (p <= 1)):
        raise MonitorError("scores must be calibrated probabilities within 0..1")
    return p, r


def adjust_to_prior(scores: np.ndarray, train_prior: float, *, iterations: int = 100, tol: float = 1e-6
                    ) -> tuple[np.ndarray, float]:
    """EM re-weighting of calibrated scores to the window's own defect share (Saerens et al., 2002)."""
    p = np.clip(np.asarray(scores, np.float64), 1e-9, 1 - 1e-9)
    if not 0 < train_prior < 1:
        raise MonitorError(f"the training defect share must be within (0, 1), got {train_prior}")
    prior = float(p.mean())
    adjusted = p
    for _ in range(iterations):
        a, b = prior / train_prior, (1 - prior) / (1 - train_prior)
        adjusted = a * p / (a * p + b * (1 - p))
        new = float(adjusted.mean())
        if abs(new - prior) < tol:
            prior = new
            break
        prior = new
    return adjusted, prior


def cbpe(scores: np.ndarray, rejected: np.ndarray, *, train_prior: float | None = None, adjust_prior: bool = False,
         draws: int = 400, level: float = 0.95, seed: int = 0, recipe: str | None = None) -> Estimate:
    """Confidence-based performance estimate of a window of calibrated scores and decisions."""
    p, r = _check(scores, rejected)
    extra: dict[str, float] = {}
    if adjust_prior:
        if train_prior is None:
            raise MonitorError("adjust_prior needs the training defect share (train_prior)")
        p, prior = adjust_to_prior(p, train_prior)
        extra["adjusted_prior"] = prior
    rf = r.astype(np.float64)
    tp, fp = float(np.sum(p * rf)), float(np.sum((1 - p) * rf))
    fn, tn = float(np.sum(p * (1 - rf))), float(np.sum((1 - p) * (1 - rf)))
    ba, fr, esc = (float(x) for x in _rates(tp, fp, tn, fn))
    rng = np.random.default_rng(seed)
    y = rng.random((draws, len(p))) < p  # labels the scores imply
    dtp, dfn = (y & r).sum(1), (y & ~r).sum(1)
    dfp, dtn = (~y & r).sum(1), (~y & ~r).sum(1)
    dba, dfr, desc = _rates(dtp, dfp, dtn, dfn)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

    def interval(x: np.ndarray) -> tuple[float, float]:
        lo, hi = np.percentile(x, q)
        return float(lo), float(hi)

    return Estimate("cbpe", len(p), ba, fr, esc, interval(dba), interval(dfr), interval(desc),
                    {"tp": tp, "fp": fp, "tn": tn, "fn": fn}, float(p.mean()), recipe=recipe, extra=extra)


def _atc_threshold(confidence: np.ndarray, correct: np.ndarray) -> float:
    """The confidence t with share(confidence > t) == share correct (on labelled validation data)."""
    acc = float(np.mean(correct))
    if acc >= 1.0:
        return float(np.min(confidence)) - 1e-12
    return float(np.quantile(confidence, 1.0 - acc))


def atc(scores: np.ndarray, rejected: np.ndarray, val_scores: np.ndarray, val_labels: np.ndarray,
        val_rejected: np.ndarray, *, recipe: str | None = None) -> Estimate:
    """Average thresholded confidence, per decision, fitted on the validation split (labels 1 = defect)."""
    p, r = _check(scores, rejected)
    vs, vr = _check(val_scores, val_rejected)
    vl = np.asarray(val_labels, bool)
    if vl.shape != vs.shape:
        raise MonitorError("validation scores and labels differ in length")
    conf_v = np.where(vr, vs, 1 - vs)
    conf = np.where(r, p, 1 - p)
    shares = {}
    for name, vmask, wmask in (("reject", vr, r), ("accept", ~vr, ~r)):
        if not vmask.any() or not wmask.any():
            shares[name] = 1.0
            continue
        correct = vl[vmask] if name == "reject" else ~vl[vmask]
        t = _atc_threshold(conf_v[vmask], correct)
        shares[name] = float(np.mean(conf[wmask] > t))
    n_rej, n_acc = float(r.sum()), float((~r).sum())
    tp, fp = shares["reject"] * n_rej, (1 - shares["reject"]) * n_rej
    tn, fn = shares["accept"] * n_acc, (1 - shares["accept"]) * n_acc
    ba, fr, esc = (float(x) for x in _rates(tp, fp, tn, fn))
    nan2 = (float("nan"), float("nan"))
    return Estimate("atc", len(p), ba, fr, esc, nan2, nan2, nan2, {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
                    (tp + fn) / len(p), recipe=recipe)


def wilson(successes: float, n: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (n = 0 gives (0, 1))."""
    from scipy.stats import norm

    if n <= 0:
        return 0.0, 1.0
    zq = float(norm.ppf((1 + level) / 2))
    ph = successes / n
    centre = (ph + zq * zq / (2 * n)) / (1 + zq * zq / n)
    half = zq * math.sqrt(ph * (1 - ph) / n + zq * zq / (4 * n * n)) / (1 + zq * zq / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def measured(labels: np.ndarray, rejected: np.ndarray, *, level: float = 0.95, recipe: str | None = None) -> Estimate:
    """The rates measured on frames with feedback labels (1 = defect), with Wilson intervals."""
    y = np.asarray(labels, bool)
    r = np.asarray(rejected, bool)
    if y.shape != r.shape or y.ndim != 1 or not len(y):
        raise MonitorError(f"feedback labels and decisions must be two non-empty vectors of one length, "
                           f"got {y.shape} and {r.shape}")
    tp, fn = float((y & r).sum()), float((y & ~r).sum())
    fp, tn = float((~y & r).sum()), float((~y & ~r).sum())
    ba, fr, esc = (float(x) for x in _rates(tp, fp, tn, fn))
    esc_i, fr_i = wilson(fn, tp + fn, level), wilson(fp, fp + tn, level)
    ba_i = (1 - 0.5 * (esc_i[1] + fr_i[1]), 1 - 0.5 * (esc_i[0] + fr_i[0]))
    return Estimate("feedback", len(y), ba, fr, esc, ba_i, fr_i, esc_i, {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
                    float(y.mean()), recipe=recipe)


@dataclass(frozen=True)
class ConceptDrift:
    """Whether feedback contradicts the calibrated scores while the inputs are in distribution."""

    flagged: bool
    n: int
    errors: int  # decisions the feedback says were wrong
    expected_errors: float  # what the calibrated scores promise for the same frames
    p_value: float
    accuracy: float
    expected_accuracy: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def concept_drift(scores: np.ndarray, rejected: np.ndarray, labels: np.ndarray, *, input_drift: bool = False,
                  alpha: float = 0.001, min_feedback: int = 30, min_drop: float = 0.02) -> ConceptDrift:
    """Flag concept drift: feedback errors significantly above the scores' promise, inputs in distribution.

    Under no concept drift each labelled frame is wrong with probability ``q = 1 - p`` if
    rejected, ``p`` if accepted; the number of errors is Poisson-binomial. The flag needs a
    one-sided p-value below ``alpha`` (normal approximation with continuity correction), an
    accuracy drop of at least ``min_drop`` and ``min_feedback`` labels; with ``input_drift``
    it is never raised (the camera moved: the inputs explain the errors).
    """
    from scipy.stats import norm

    p, r = _check(scores, rejected)
    y = np.asarray(labels, bool)
    if y.shape != p.shape:
        raise MonitorError("feedback labels and scores differ in length")
    q = np.where(r, 1 - p, p)
    errors = int(np.sum(r != y))
    expected = float(q.sum())
    var = float(np.sum(q * (1 - q)))
    z = (errors - 0.5 - expected) / math.sqrt(var) if var > 0 else (math.inf if errors > expected else -math.inf)
    p_value = float(norm.sf(z))
    n = len(p)
    acc, exp_acc = 1 - errors / n, 1 - expected / n
    if n < min_feedback:
        flagged, reason = False, f"only {n} feedback labels (need {min_feedback})"
    elif input_drift:
        flagged, reason = False, "input drift is alarmed: errors are explained by the inputs, not the concept"
    elif p_value < alpha and exp_acc - acc >= min_drop:
        flagged, reason = True, (f"feedback accuracy {acc:.3f} vs {exp_acc:.3f} promised by the scores "
                                 f"(p = {p_value:.2g}) while the inputs are in distribution")
    else:
        flagged, reason = False, "feedback agrees with the calibrated scores"
    return ConceptDrift(flagged, n, errors, expected, p_value, acc, exp_acc, reason)
