"""Pure metric functions over labels and scores: no I/O, no torch, no MLflow.

Conventions used everywhere in LineGuard:

- ``labels``: 0/1 integers, **1 = the positive class = a defect** ("bad").
- ``scores``: the probability of the positive class, p(bad) in [0, 1].
- A decision is "reject" (predicted bad) when ``score >= threshold``.
- A **false reject** is a good item rejected (a false positive); the **false-reject
  rate** is FP / #good. An **escape** is a defect passed as good (a false negative);
  the **escape rate** is FN / #bad.
- Undefined values (a slice with one class only, an empty slice) are ``nan`` in the
  numeric functions and ``None`` plus a note in the dictionaries built from them;
  nothing here raises on degenerate input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

NAN = math.nan
# Logits are clipped to this range when converting probabilities back to logits.
_LOGIT_CLIP = 30.0


def _arrays(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    return y, s


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else NAN


# --- confusion matrix and threshold metrics --------------------------------------------------


@dataclass(frozen=True)
class Confusion:
    """Binary confusion counts, positive = defect."""

    tn: int
    fp: int
    fn: int
    tp: int

    @property
    def n(self) -> int:
        return self.tn + self.fp + self.fn + self.tp

    def as_matrix(self) -> list[list[int]]:
        """[[tn, fp], [fn, tp]]: rows = true (good, bad), columns = predicted (good, bad)."""
        return [[self.tn, self.fp], [self.fn, self.tp]]


def decisions(scores: Any, threshold: float | np.ndarray) -> np.ndarray:
    """Predicted labels (1 = reject) for scores and a scalar or per-item threshold."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    return (s >= np.asarray(threshold, dtype=np.float64)).astype(np.int64)


def confusion(labels: Any, predicted: Any) -> Confusion:
    """Confusion counts from true and predicted 0/1 labels."""
    y, p = _arrays(labels, predicted)
    p = p.astype(np.int64)
    return Confusion(
        tn=int(np.sum((y == 0) & (p == 0))),
        fp=int(np.sum((y == 0) & (p == 1))),
        fn=int(np.sum((y == 1) & (p == 0))),
        tp=int(np.sum((y == 1) & (p == 1))),
    )


def rates(cm: Confusion) -> dict[str, float]:
    """Accuracy, balanced accuracy, per-class precision/recall/F1, false-reject and escape rates."""
    n_good, n_bad = cm.tn + cm.fp, cm.fn + cm.tp
    recall_bad = _ratio(cm.tp, n_bad)
    recall_good = _ratio(cm.tn, n_good)
    precision_bad = _ratio(cm.tp, cm.tp + cm.fp)
    precision_good = _ratio(cm.tn, cm.tn + cm.fn)

    def f1(p: float, r: float) -> float:
        if math.isnan(p) or math.isnan(r):
            return NAN
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)

    balanced = NAN if math.isnan(recall_bad) or math.isnan(recall_good) else (recall_bad + recall_good) / 2
    return {
        "n": float(cm.n),
        "n_good": float(n_good),
        "n_bad": float(n_bad),
        "accuracy": _ratio(cm.tp + cm.tn, cm.n),
        "balanced_accuracy": balanced,
        "precision_bad": precision_bad,
        "recall_bad": recall_bad,
        "f1_bad": f1(precision_bad, recall_bad),
        "precision_good": precision_good,
        "recall_good": recall_good,
        "f1_good": f1(precision_good, recall_good),
        "false_reject_rate": _ratio(cm.fp, n_good),
        "escape_rate": _ratio(cm.fn, n_bad),
    }


def expected_cost(cm: Confusion, false_reject: float = 1.0, missed_defect: float = 1.0) -> float:
    """Mean cost per item: (false_reject * FP + missed_defect * FN) / n."""
    return _ratio(false_reject * cm.fp + missed_defect * cm.fn, cm.n)


def item_costs(
    labels: Any, predicted: Any, false_reject: float = 1.0, missed_defect: float = 1.0
) -> np.ndarray:
    """The cost of each item's decision (0 when right), for paired comparisons."""
    y, p = _arrays(labels, predicted)
    p = p.astype(np.int64)
    return np.where((y == 0) & (p == 1), false_reject, 0.0) + np.where((y == 1) & (p == 0), missed_defect, 0.0)


# --- ranking metrics ---------------------------------------------------------------------------


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, thresholds), starting at (0, 0); empty when undefined."""
    y, s = _arrays(labels, scores)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return np.array([]), np.array([]), np.array([])
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s_sorted))[0], y.size - 1]
    tps = np.cumsum(y_sorted)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thresholds = np.r_[np.inf, s_sorted[distinct]]
    return fpr, tpr, thresholds


def roc_auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve (ties count half); nan with one class only."""
    y, s = _arrays(labels, scores)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return NAN
    # Mann-Whitney U with average ranks (handles ties exactly).
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    s_sorted = s[order]
    _, first, counts = np.unique(s_sorted, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def pr_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) for decreasing thresholds; empty with no positives."""
    y, s = _arrays(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0 or y.size == 0:
        return np.array([]), np.array([]), np.array([])
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s_sorted))[0], y.size - 1]
    tps = np.cumsum(y_sorted)[distinct].astype(np.float64)
    predicted = (distinct + 1).astype(np.float64)
    return tps / predicted, tps / n_pos, s_sorted[distinct]


def pr_auc(labels: Any, scores: Any) -> float:
    """Average precision (step-wise area under the PR curve, as scikit-learn); nan without both classes."""
    y, _ = _arrays(labels, scores)
    if y.size == 0 or y.sum() == 0 or y.sum() == y.size:
        return NAN
    precision, recall, _ = pr_curve(labels, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


# --- calibration -------------------------------------------------------------------------------


def reliability(labels: Any, scores: Any, bins: int = 15) -> dict[str, list[float]]:
    """Reliability-diagram data over equal-width bins of p(bad).

    Per bin: its edges, the item count, the mean predicted p(bad) and the observed
    fraction of defects (nan for empty bins).
    """
    y, s = _arrays(labels, scores)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(s, edges[1:-1], right=False), 0, bins - 1)
    counts = np.bincount(idx, minlength=bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=s, minlength=bins)
    sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(counts > 0, sum_p / np.maximum(counts, 1), np.nan)
        frac = np.where(counts > 0, sum_y / np.maximum(counts, 1), np.nan)
    return {
        "edges": edges.tolist(),
        "count": counts.tolist(),
        "mean_score": mean_p.tolist(),
        "fraction_bad": frac.tolist(),
    }


def expected_calibration_error(labels: Any, scores: Any, bins: int = 15) -> float:
    """ECE of p(bad): sum over equal-width bins of |mean p(bad) - fraction bad| weighted by bin share.

    This is the calibration of the score the threshold is applied to (the positive-class
    probability), which is stricter than the "top-label" ECE of Guo et al. for two classes.
    nan for an empty input.
    """
    y, s = _arrays(labels, scores)
    if y.size == 0:
        return NAN
    rel = reliability(y, s, bins)
    counts = np.asarray(rel["count"])
    gap = np.abs(np.nan_to_num(np.asarray(rel["mean_score"])) - np.nan_to_num(np.asarray(rel["fraction_bad"])))
    return float(np.sum(counts * gap) / y.size)


def logit(p: Any) -> np.ndarray:
    """log(p / (1 - p)), clipped so 0 and 1 stay finite."""
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-13, 1 - 1e-13)
    return np.clip(np.log(q) - np.log1p(-q), -_LOGIT_CLIP, _LOGIT_CLIP)


def sigmoid(z: Any) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def margins_from_logits(logits: Any) -> np.ndarray:
    """Two-class logits (N x 2, bad = column 1) -> the margin z with p(bad) = sigmoid(z)."""
    lg = np.asarray(logits, dtype=np.float64)
    if lg.ndim == 2 and lg.shape[1] == 2:
        return lg[:, 1] - lg[:, 0]
    if lg.ndim == 2 and lg.shape[1] == 1:
        return lg[:, 0]
    return lg.reshape(-1)


def _nll(margins: np.ndarray, targets: np.ndarray, inv_t: float) -> float:
    z = margins * inv_t
    # Cross-entropy against soft targets t: t * -log sigmoid(z) + (1 - t) * -log sigmoid(-z), stably.
    return float(np.mean(targets * np.logaddexp(0.0, -z) + (1.0 - targets) * np.logaddexp(0.0, z)))


def _platt_targets(labels: np.ndarray) -> np.ndarray:
    """Platt's targets (n+ + 1)/(n+ + 2) and 1/(n- + 2): a finite optimum even on separable data."""
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    return np.where(labels == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))


def fit_temperature(margins: Any, labels: Any, t_min: float = 0.05, t_max: float = 20.0) -> float:
    """Temperature T minimising the NLL of sigmoid(margin / T) on validation data.

    The targets are Platt's (``(n+ + 1) / (n+ + 2)`` for defects, ``1 / (n- + 2)`` for good
    items) rather than hard 0/1: with perfectly separated validation data (common for a
    good model) the hard-label optimum is T -> 0, i.e. certainty from a few hundred
    images; the soft targets keep the confidence at what the sample size supports.
    The loss is convex in 1/T, so a golden-section search over 1/T finds the optimum
    within [t_min, t_max]. Returns 1.0 (no change) for empty or one-class data.
    """
    z, y = np.asarray(margins, dtype=np.float64).reshape(-1), np.asarray(labels, dtype=np.int64).reshape(-1)
    if y.size == 0 or y.min() == y.max():
        return 1.0
    y = _platt_targets(y)
    lo, hi = 1.0 / t_max, 1.0 / t_min
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = _nll(z, y, c), _nll(z, y, d)
    for _ in range(80):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = _nll(z, y, c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = _nll(z, y, d)
    inv_t = (a + b) / 2
    for edge in (lo, hi):  # the optimum may sit on the boundary
        if _nll(z, y, edge) < _nll(z, y, inv_t):
            inv_t = edge
    return float(1.0 / inv_t)


def apply_temperature(margins: Any, temperature: float) -> np.ndarray:
    """Calibrated p(bad) = sigmoid(margin / T)."""
    return sigmoid(np.asarray(margins, dtype=np.float64) / float(temperature))


# --- cost-based threshold --------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold and the expected cost it reaches on the data it was fitted on."""

    threshold: float
    expected_cost: float
    n_good: int
    n_bad: int
    note: str = ""


def bayes_threshold(false_reject: float = 1.0, missed_defect: float = 1.0) -> float:
    """The cost-optimal threshold for calibrated scores: reject when p(bad) >= fr / (fr + md)."""
    total = false_reject + missed_defect
    return 0.5 if total <= 0 else false_reject / total


def choose_threshold(
    labels: Any, scores: Any, false_reject: float = 1.0, missed_defect: float = 1.0,
    defect_rate: float | None = 0.5,
) -> ThresholdChoice:
    """The threshold minimising the expected cost per item on a line with ``defect_rate`` defects, estimated
    on (validation) data: ``fr * (1 - rate) * false-reject rate + md * rate * escape rate``.

    The validation split's own class mix is not the line's: ingest keeps its natural mix (a
    third defects on the solar cells) while the test split is balanced. Minimising the raw
    error count there picks a threshold for that mix -- on the solar cells it let 47 % of the
    defects through at 3 % false rejects, 75 % balanced accuracy where 80 % was on offer. With
    the default rate 0.5 both classes weigh the same, as on the balanced test split (equal
    costs: the threshold that maximises balanced accuracy); a line that knows its rate (e.g.
    0.02) sets it with costs to match. ``defect_rate=None`` weighs by the data's own mix.

    Every distinct cut between sorted scores is tried. When many thresholds reach the
    same minimum (e.g. perfectly separated data), the one closest to the Bayes threshold
    is taken -- ``fr / (fr + md)`` at the data's own mix, shifted by the prior odds of
    ``defect_rate`` against that mix: the right answer for calibrated scores and the
    widest-margin choice otherwise. Data without both classes returns ``fr / (fr + md)``.
    """
    y, s = _arrays(labels, scores)
    n_bad, n_good = int(y.sum()), int((1 - y).sum())
    if defect_rate is not None and not 0.0 < defect_rate < 1.0:
        raise ValueError(f"defect_rate must be between 0 and 1 (exclusive), got {defect_rate}")
    prior = bayes_threshold(false_reject, missed_defect)
    if n_bad == 0 or n_good == 0:
        note = "no validation data" if y.size == 0 else "validation data has one class only"
        return ThresholdChoice(prior, NAN, n_good, n_bad, note=f"{note}: Bayes threshold {prior:.3f} used")
    if defect_rate is None:
        w_good = w_bad = 1.0 / y.size
    else:
        w_good, w_bad = (1.0 - defect_rate) / n_good, defect_rate / n_bad
        if 0.0 < prior < 1.0:  # the calibrated scores carry the data's odds n_bad / n_good; the line's are the rate's
            odds = prior / (1.0 - prior) * (n_bad / n_good) * ((1.0 - defect_rate) / defect_rate)
            prior = odds / (1.0 + odds)
    uniq = np.unique(s)
    # Candidate cuts: below everything, midpoints, above everything (reject nothing).
    cuts = np.r_[uniq[0] - 1e-9, (uniq[:-1] + uniq[1:]) / 2, uniq[-1] + 1e-9]
    cuts = np.clip(cuts, 0.0, 1.0 + 1e-9) if s.min() >= 0 and s.max() <= 1 else cuts
    # Vectorised counts: for a cut t, FP = #good with s >= t, FN = #bad with s < t.
    good_sorted, bad_sorted = np.sort(s[y == 0]), np.sort(s[y == 1])
    fp = n_good - np.searchsorted(good_sorted, cuts, side="left")
    fn = np.searchsorted(bad_sorted, cuts, side="left")
    cost = false_reject * w_good * fp + missed_defect * w_bad * fn
    best = cost.min()
    optimal = np.nonzero(np.isclose(cost, best, rtol=0, atol=1e-12))[0]
    # Among the optimal cuts, choose by interval: each optimal index i covers (uniq[i-1], uniq[i]].
    lows = np.r_[-np.inf, uniq][optimal]
    highs = np.r_[uniq, np.inf][optimal]
    clipped = np.clip(prior, lows, highs)
    k = int(np.argmin(np.abs(clipped - prior)))
    thr = float(clipped[k])
    if not np.isfinite(thr):
        thr = float(cuts[optimal[k]])
    # A threshold equal to a score value would count that score as rejected; nudge into the open interval.
    if thr == lows[k]:
        thr = float(cuts[optimal[k]]) if not np.isfinite(highs[k]) else float((lows[k] + highs[k]) / 2)
    return ThresholdChoice(thr, float(best), n_good, n_bad)


@dataclass(frozen=True)
class Thresholds:
    """Thresholds chosen on data: a default and per-recipe overrides, with notes on the choice.

    A fitting result, not a decision rule: :func:`lineguard.evaluate.fit_decision` turns
    it, with the temperature and the cost, into the :class:`~lineguard.edge.decision.Decision`
    that applies it (the one place where "the recipe's threshold, else the default" lives).
    """

    default: float
    per_recipe: dict[str, float]
    notes: tuple[str, ...] = ()


def choose_thresholds(
    labels: Any,
    scores: Any,
    recipes: Any,
    false_reject: float = 1.0,
    missed_defect: float = 1.0,
    per_recipe: bool = True,
    min_per_class: int = 10,
    defect_rate: float | None = 0.5,
) -> Thresholds:
    """A global cost-minimising threshold, plus one per recipe where the data allows.

    A recipe with fewer than ``min_per_class`` validation images of either class keeps
    the global threshold (noted), because a threshold fitted on a handful of images is
    noise.
    """
    y, s = _arrays(labels, scores)
    r = np.asarray(recipes, dtype=object).reshape(-1)
    overall = choose_threshold(y, s, false_reject, missed_defect, defect_rate)
    notes = [f"global threshold: {overall.note}"] if overall.note else []
    out: dict[str, float] = {}
    if per_recipe:
        for recipe in sorted({str(v) for v in r}):
            mask = r == recipe
            n_bad, n_good = int(y[mask].sum()), int((1 - y[mask]).sum())
            if min(n_bad, n_good) < min_per_class:
                notes.append(
                    f"recipe '{recipe}': {n_good} good / {n_bad} bad validation images "
                    f"(< {min_per_class} of a class), global threshold used"
                )
                continue
            out[recipe] = choose_threshold(y[mask], s[mask], false_reject, missed_defect, defect_rate).threshold
    return Thresholds(default=overall.threshold, per_recipe=out, notes=tuple(notes))


# --- confidence intervals ----------------------------------------------------------------------


MetricFn = Callable[[np.ndarray, np.ndarray, np.ndarray], float]
"""A metric over (labels, scores, per-item thresholds)."""


def _from_decisions(name: str, false_reject: float = 1.0, missed_defect: float = 1.0) -> MetricFn:
    def fn(y: np.ndarray, s: np.ndarray, t: np.ndarray) -> float:
        cm = confusion(y, decisions(s, t))
        if name == "expected_cost":
            return expected_cost(cm, false_reject, missed_defect)
        return rates(cm)[name]

    return fn


def _bootstrap_counts(
    y: np.ndarray, pred: np.ndarray, metric: str, n_resamples: int, rng: np.random.Generator,
    false_reject: float, missed_defect: float,
) -> np.ndarray:
    """Vectorised stratified bootstrap of a confusion-based metric (class sizes stay fixed)."""
    n_good, n_bad = int((y == 0).sum()), int((y == 1).sum())
    rejected_good = pred[y == 0].astype(np.int64)
    rejected_bad = pred[y == 1].astype(np.int64)
    # Counts of rejected items per resample: draw indices in chunks to bound memory.
    fp = np.zeros(n_resamples)
    tp = np.zeros(n_resamples)
    chunk = max(1, 2_000_000 // max(1, y.size))
    for start in range(0, n_resamples, chunk):
        k = min(chunk, n_resamples - start)
        if n_good:
            fp[start : start + k] = rejected_good[rng.integers(0, n_good, (k, n_good))].sum(axis=1)
        if n_bad:
            tp[start : start + k] = rejected_bad[rng.integers(0, n_bad, (k, n_bad))].sum(axis=1)
    tn, fn = n_good - fp, n_bad - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        recall_bad = tp / n_bad if n_bad else np.full(n_resamples, NAN)
        recall_good = tn / n_good if n_good else np.full(n_resamples, NAN)
        table = {
            "accuracy": lambda: (tp + tn) / (n_good + n_bad),
            "balanced_accuracy": lambda: (recall_bad + recall_good) / 2,
            "recall_bad": lambda: recall_bad,
            "recall_good": lambda: recall_good,
            "false_reject_rate": lambda: 1 - recall_good,
            "escape_rate": lambda: 1 - recall_bad,
            "precision_bad": lambda: np.where(tp + fp > 0, tp / (tp + fp), NAN),
            "precision_good": lambda: np.where(tn + fn > 0, tn / (tn + fn), NAN),
            "expected_cost": lambda: (false_reject * fp + missed_defect * fn) / (n_good + n_bad),
        }
        if metric not in table:
            fn_ = _from_decisions(metric, false_reject, missed_defect)
            groups = [np.nonzero(y == c)[0] for c in (0, 1) if (y == c).any()]
            out = np.empty(n_resamples)
            for b in range(n_resamples):
                idx = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
                out[b] = fn_(y[idx], pred[idx].astype(np.float64), np.full(idx.size, 0.5))
            return out
        return np.asarray(table[metric](), dtype=np.float64)


def bootstrap_ci(
    labels: Any,
    scores: Any,
    thresholds: float | np.ndarray,
    metric: MetricFn | str,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    false_reject: float = 1.0,
    missed_defect: float = 1.0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of a metric, resampling within each class (seeded, reproducible).

    Stratifying by class keeps both classes in every resample, so metrics such as
    balanced accuracy stay defined. Returns (nan, nan) when there is nothing to resample
    or the metric is undefined on every resample.
    """
    y, s = _arrays(labels, scores)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), y.shape)
    if y.size == 0 or n_resamples <= 0:
        return NAN, NAN
    rng = np.random.default_rng(seed)
    groups = [np.nonzero(y == c)[0] for c in (0, 1)]
    groups = [g for g in groups if g.size]
    if isinstance(metric, str):
        values = _bootstrap_counts(y, decisions(s, t), metric, n_resamples, rng, false_reject, missed_defect)
    else:
        values = np.empty(n_resamples, dtype=np.float64)
        for b in range(n_resamples):
            idx = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
            values[b] = metric(y[idx], s[idx], t[idx])
    values = values[~np.isnan(values)]
    if values.size == 0:
        return NAN, NAN
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


# --- slices ----------------------------------------------------------------------------------


def clean(value: float) -> float | None:
    """nan -> None for JSON and reports."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def summarise(
    labels: Any,
    scores: Any,
    thresholds: float | np.ndarray,
    false_reject: float = 1.0,
    missed_defect: float = 1.0,
    bins: int = 15,
    n_resamples: int = 0,
    seed: int = 0,
    ci_metrics: tuple[str, ...] = ("balanced_accuracy", "false_reject_rate", "escape_rate"),
) -> dict[str, Any]:
    """Every metric of one slice as a JSON-ready dict (None for undefined, with notes).

    Keys: the :func:`rates`, ``expected_cost``, ``roc_auc``, ``pr_auc``, ``ece``,
    ``confusion`` ([[tn, fp], [fn, tp]]), ``ci`` (metric -> [low, high]) and ``notes``.
    """
    y, s = _arrays(labels, scores)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), y.shape)
    cm = confusion(y, decisions(s, t))
    out: dict[str, Any] = {k: clean(v) for k, v in rates(cm).items()}
    out.update(n=cm.n, n_good=cm.tn + cm.fp, n_bad=cm.tp + cm.fn)
    out["expected_cost"] = clean(expected_cost(cm, false_reject, missed_defect))
    out["roc_auc"] = clean(roc_auc(y, s))
    out["pr_auc"] = clean(pr_auc(y, s))
    out["ece"] = clean(expected_calibration_error(y, s, bins))
    out["confusion"] = cm.as_matrix()
    notes: list[str] = []
    if y.size == 0:
        notes.append("empty slice: no metrics")
    elif cm.tn + cm.fp == 0 or cm.tp + cm.fn == 0:
        missing = "good" if cm.tn + cm.fp == 0 else "bad"
        notes.append(f"no {missing} items: balanced accuracy, AUCs and the {missing}-class rates are undefined")
    out["ci"] = {}
    if n_resamples > 0 and y.size:
        for name in ci_metrics:
            lo, hi = bootstrap_ci(y, s, t, name, n_resamples=n_resamples, seed=seed, false_reject=false_reject,
                                  missed_defect=missed_defect)
            out["ci"][name] = [clean(lo), clean(hi)]
    out["notes"] = notes
    return out


def detection_rates(
    labels: Any,
    scores: Any,
    thresholds: float | np.ndarray,
    defect_types: Any,
    n_resamples: int = 0,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per defect type: how many defects of that type were rejected (recall on that type), with a CI."""
    y, s = _arrays(labels, scores)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), y.shape)
    kinds = np.asarray(defect_types, dtype=object).reshape(-1)
    out: dict[str, dict[str, Any]] = {}
    for kind in sorted({str(k) for k, label in zip(kinds, y, strict=True) if label == 1}):
        mask = (y == 1) & (kinds == kind)
        caught = decisions(s[mask], t[mask])
        entry: dict[str, Any] = {"n": int(mask.sum()), "detection_rate": clean(float(caught.mean()))}
        if n_resamples > 0:
            rng = np.random.default_rng(seed)
            means = caught[rng.integers(0, caught.size, (n_resamples, caught.size))].mean(axis=1)
            entry["ci"] = [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]
        out[kind or "unspecified"] = entry
    return out


def per_slice(
    labels: Any,
    scores: Any,
    thresholds: float | np.ndarray,
    groups: Any,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """:func:`summarise` for every value of ``groups`` (e.g. the recipe of each item)."""
    y, s = _arrays(labels, scores)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), y.shape)
    g = np.asarray(groups, dtype=object).reshape(-1)
    return {str(k): summarise(y[g == k], s[g == k], t[g == k], **kwargs) for k in sorted({str(v) for v in g})}


def describe_test_set(
    labels: Any, recipes: Any, min_per_recipe: int
) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Counts per recipe and class, and warnings: imbalance within a recipe, too few images for a useful CI."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    r = np.asarray(recipes, dtype=object).reshape(-1)
    counts: dict[str, dict[str, int]] = {}
    warnings: list[str] = []
    if y.size == 0:
        return counts, ["the test split is empty: nothing can be evaluated"]
    for recipe in sorted({str(v) for v in r}):
        mask = r == recipe
        n_bad, n_good = int(y[mask].sum()), int((1 - y[mask]).sum())
        counts[recipe] = {"good": n_good, "bad": n_bad}
        if n_good + n_bad < min_per_recipe:
            half_width = 1.96 * math.sqrt(0.25 / max(1, n_good + n_bad))
            warnings.append(
                f"recipe '{recipe}' has only {n_good + n_bad} test images (< {min_per_recipe}): "
                f"its accuracy is known to about ±{100 * half_width:.0f} points at worst"
            )
        if min(n_good, n_bad) == 0:
            warnings.append(f"recipe '{recipe}' has no {'good' if n_good == 0 else 'bad'} test images")
        elif max(n_good, n_bad) > 1.5 * min(n_good, n_bad):
            warnings.append(f"recipe '{recipe}' test images are imbalanced: {n_good} good vs {n_bad} bad")
    return counts, warnings


def as_float_dict(d: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, defined top-level entries of a summary (for MLflow metrics)."""
    return {k: float(v) for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)}
