"""Output monitoring: does the model still score this line the way it scored its validation split, and the way
the model before it did?

Input drift (:mod:`lineguard.monitor.drift`) watches the images; this module watches what the model makes of
them. Per recipe, over a window of recent decisions, two comparisons:

- **against the bundle's reference** -- the calibrated scores of the validation split (``reference.npz``), of
  the same recipe when the validation split holds enough of it, with the recipe's own threshold applied;
- **against the previous model** -- the last window of decisions, on this line, of the bundle version that
  decided before the current one (the store's ``bundle_version``).

Each comparison tests the score distribution (two-sample Kolmogorov-Smirnov for a p-value, the population
stability index for the size of the change) and the reject rate (a two-proportion z-test), and says in one
word what it found: ``stable``, ``watch`` (a change that is real but small), ``shifted``, or ``not enough
data``.

Why the reference comparison adjusts for the defect share: a validation split is often half defects, a line
a few per cent, so the line's scores and reject rate would differ from the validation split's even with a
perfect, unchanged model. Under a change of defect share alone, the scores of each class keep their
distribution, so the line's scores are a mix of the validation's good and defective scores; the share that
best explains them (:func:`estimate_defect_share`, a maximum-likelihood mixing weight) is estimated from the
window, and the window is compared with the validation scores mixed at that share. What is left is a change
the defect share cannot explain: good cones that score higher, defects that score lower, a reject rate the
estimated share does not give. Frames of a line are not independent (a run of similar
cones), so the tests are overconfident; the default ``alpha`` is 0.001 for that reason.

Pure numpy/scipy; :func:`validation_scores` reads a bundle's arrays through its own bounded reader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lineguard.monitor.reference import MonitorError

__all__ = [
    "ALPHA",
    "OutputComparison",
    "RateTest",
    "ScoreTest",
    "compare_to_previous",
    "compare_to_reference",
    "estimate_defect_share",
    "output_report",
    "two_proportion_test",
    "validation_scores",
    "weighted_ks",
    "weighted_psi",
]

ALPHA = 0.001  # frames of a line are correlated: a stricter level than the textbook 0.05
MIN_FRAMES = 100  # a window of fewer decisions says "not enough data"
MIN_REFERENCE = 30  # fewer validation items of a recipe: its scores are compared with the whole split's
PSI_MODERATE = 0.1  # below this, a significant KS difference is real but small ("watch")
PSI_MAJOR = 0.25
PSI_BINS = 10
VERDICTS = ("not enough data", "stable", "watch", "shifted")  # in order of concern


# --- the tests ------------------------------------------------------------------------------------


def two_proportion_test(k1: float, n1: float, k2: float, n2: float) -> tuple[float, float]:
    """Pooled two-proportion z-test of ``k1/n1`` against ``k2/n2``: ``(z, two-sided p)``.

    ``n2`` may be an effective (non-integer) sample size. Both rates 0 or both 1: ``(0, 1)``.
    """
    from scipy.special import ndtr

    if n1 <= 0 or n2 <= 0:
        raise MonitorError(f"a two-proportion test needs frames on both sides, got {n1} and {n2}")
    p1, p2 = k1 / n1, k2 / n2
    pooled = (k1 + k2) / (n1 + n2)
    var = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)
    if var <= 0:
        return 0.0, 1.0
    z = (p1 - p2) / math.sqrt(var)
    return float(z), float(2.0 * ndtr(-abs(z)))


def _weights(n: int, weights: np.ndarray | None) -> np.ndarray:
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (n,) or np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise MonitorError(f"reference weights must be {n} finite, non-negative numbers with a positive sum")
    return w / w.sum()


def _effective_n(w: np.ndarray) -> float:
    """Kish's effective sample size of normalised weights."""
    return float(1.0 / np.sum(w * w))


def weighted_ks(
    reference: np.ndarray, window: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, float, float]:
    """Two-sample KS of a (weighted) reference against a window: ``(D, p-value, effective reference n)``.

    The p-value is the asymptotic Kolmogorov distribution at Stephens' corrected statistic, with the
    reference's effective size (Kish) -- the usual asymptotic p-value when the weights are equal.
    """
    from scipy.special import kolmogorov

    a = np.asarray(reference, np.float64)
    b = np.asarray(window, np.float64)
    if len(a) < 2 or len(b) < 2 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise MonitorError(
            f"the KS test needs at least 2 finite values on each side, got {len(a)} and {len(b)}"
        )
    w = _weights(len(a), weights)
    order = np.argsort(a, kind="stable")
    a_sorted, cum = a[order], np.cumsum(w[order])
    b_sorted = np.sort(b)
    grid = np.unique(np.concatenate([a_sorted, b_sorted]))
    ia = np.searchsorted(a_sorted, grid, side="right")
    fa = np.where(ia > 0, cum[np.maximum(ia - 1, 0)], 0.0)
    fb = np.searchsorted(b_sorted, grid, side="right") / len(b_sorted)
    d = float(np.max(np.abs(fa - fb)))
    n_ref = _effective_n(w)
    en = math.sqrt(n_ref * len(b) / (n_ref + len(b)))
    p = float(kolmogorov((en + 0.12 + 0.11 / en) * d))
    return d, min(1.0, max(0.0, p)), n_ref


def _weighted_quantiles(a: np.ndarray, w: np.ndarray, qs: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="stable")
    cum = np.cumsum(w[order])
    idx = np.minimum(np.searchsorted(cum, qs * cum[-1], side="left"), len(a) - 1)
    return np.asarray(a[order][idx])


def weighted_psi(
    reference: np.ndarray, window: np.ndarray, weights: np.ndarray | None = None, bins: int = PSI_BINS
) -> float:
    """Population stability index of a window against a (weighted) reference, over its quantile bins.

    As :func:`lineguard.monitor.drift.psi`: open-ended bins at the reference's quantiles, an empty bin
    counted as half an item, so the log stays finite.
    """
    a, b = np.asarray(reference, np.float64), np.asarray(window, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise MonitorError(f"PSI needs at least 2 values on each side, got {len(a)} and {len(b)}")
    w = _weights(len(a), weights)
    edges = np.unique(_weighted_quantiles(a, w, np.linspace(0, 1, bins + 1)[1:-1]))
    n_ref = _effective_n(w)
    pa = np.bincount(np.searchsorted(edges, a, side="right"), weights=w, minlength=len(edges) + 1)
    pb = np.bincount(np.searchsorted(edges, b, side="right"), minlength=len(edges) + 1).astype(
        np.float64
    ) / len(b)
    pa = np.maximum(pa, 0.5 / n_ref)
    pb = np.maximum(pb, 0.5 / len(b))
    return float(np.sum((pb - pa) * np.log(pb / pa)))


def estimate_defect_share(
    window: np.ndarray, ref_scores: np.ndarray, ref_defect: np.ndarray, min_per_class: int = 5, bins: int = 10
) -> float | None:
    """The defect share under which the window's scores are most likely a mix of the reference's two classes.

    Under a change of defect share alone (label shift) each class keeps its score distribution, so the
    window is a mix ``(1 - share) * good + share * defect`` of the reference's class distributions. The
    share is their maximum-likelihood mixing weight (EM over ``bins`` quantile bins of the reference
    scores, each class's bin counts smoothed by a tenth of an item): a window whose good cones score
    differently is not explained by a few more defects, as it would be by the mean alone. None when
    the reference lacks ``min_per_class`` items of a class.
    """
    s, d = np.asarray(ref_scores, np.float64), np.asarray(ref_defect).astype(bool)
    w = np.asarray(window, np.float64)
    if int(d.sum()) < min_per_class or int((~d).sum()) < min_per_class or not len(w):
        return None
    edges = np.unique(np.quantile(s, np.linspace(0, 1, bins + 1)[1:-1]))
    k = len(edges) + 1

    def shares(x: np.ndarray) -> np.ndarray:
        counts = np.bincount(np.searchsorted(edges, x, side="right"), minlength=k) + 0.1
        return np.asarray(counts / counts.sum())

    good, bad = shares(s[~d]), shares(s[d])
    n_win = np.bincount(np.searchsorted(edges, w, side="right"), minlength=k).astype(np.float64)
    share = 0.5
    for _ in range(500):
        mix = share * bad + (1.0 - share) * good
        new = float(np.sum(n_win * share * bad / mix) / n_win.sum())
        if abs(new - share) < 1e-7:
            share = new
            break
        share = new
    return float(np.clip(share, 0.0, 1.0))


# --- the records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreTest:
    """KS and PSI of a window's scores against a reference; ``verdict`` stable, watch or shifted."""

    ks_statistic: float
    ks_p_value: float
    psi: float
    n_window: int
    n_reference: float  # effective size when the reference is weighted
    verdict: str


@dataclass(frozen=True)
class RateTest:
    """A window's reject rate against the reference's; ``verdict`` higher, lower or same."""

    window_rate: float
    reference_rate: float
    difference: float
    z: float
    p_value: float
    n_window: int
    n_reference: float
    verdict: str


@dataclass(frozen=True)
class OutputComparison:
    """One recipe's window against one reference (``against``: ``reference`` or ``previous``).

    ``verdict`` is the most concerning of the two tests (``shifted`` when the scores shifted or the
    reject rate differs; ``watch`` when the scores differ a little); ``message`` says it in a sentence.
    ``defect_share`` holds the estimated share of defects in the window and the reference's own,
    when the reference comparison was adjusted for it.
    """

    recipe: str | None
    against: str
    reference: str  # what was compared with, in words
    verdict: str
    message: str
    n_window: int
    n_reference: int
    scores: ScoreTest | None = None
    reject_rate: RateTest | None = None
    defect_share: dict[str, float | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _score_test(ref: np.ndarray, win: np.ndarray, weights: np.ndarray | None, alpha: float) -> ScoreTest:
    d, p, n_ref = weighted_ks(ref, win, weights)
    value = weighted_psi(ref, win, weights)
    verdict = "stable" if p >= alpha else ("shifted" if value >= PSI_MODERATE else "watch")
    return ScoreTest(d, p, value, len(win), n_ref, verdict)


def _rate_test(k: int, n: int, ref_rate: float, n_ref: float, alpha: float) -> RateTest:
    z, p = two_proportion_test(k, n, ref_rate * n_ref, n_ref)
    rate = k / n
    verdict = "same" if p >= alpha else ("higher" if rate > ref_rate else "lower")
    return RateTest(rate, ref_rate, rate - ref_rate, z, p, n, n_ref, verdict)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p {p:.3f}"


def _verdict(scores: ScoreTest, rate: RateTest) -> str:
    if scores.verdict == "shifted" or rate.verdict != "same":
        return "shifted"
    return scores.verdict


def _message(recipe: str | None, what: str, scores: ScoreTest, rate: RateTest, expected: str) -> str:
    name = recipe if recipe is not None else "(no recipe)"
    if scores.verdict == "stable":
        s = f"its scores look like {what}'s ({_p(scores.ks_p_value)}, PSI {scores.psi:.2f})"
    elif scores.verdict == "watch":
        s = (
            f"its scores differ slightly from {what}'s (KS D {scores.ks_statistic:.2f}, {_p(scores.ks_p_value)}; "
            f"PSI {scores.psi:.2f}, a small change)"
        )
    else:
        s = (
            f"its scores moved away from {what}'s (KS D {scores.ks_statistic:.2f}, {_p(scores.ks_p_value)}; "
            f"PSI {scores.psi:.2f}{', a major change' if scores.psi >= PSI_MAJOR else ''})"
        )
    r = {"same": "in line with", "higher": "HIGHER than", "lower": "LOWER than"}[rate.verdict]
    return (
        f"{name}: {s}; reject rate {_pct(rate.window_rate)} over {rate.n_window:,} frames, {r} "
        f"{_pct(rate.reference_rate)} {expected} ({_p(rate.p_value)})."
    )


def _not_enough(
    recipe: str | None, against: str, reference: str, n: int, n_ref: int, why: str
) -> OutputComparison:
    return OutputComparison(
        recipe, against, reference, "not enough data", f"{recipe or '(no recipe)'}: {why}", n, n_ref
    )


def compare_to_reference(
    scores: np.ndarray,
    rejected: np.ndarray,
    ref_scores: np.ndarray,
    ref_defect: np.ndarray,
    threshold: float,
    *,
    recipe: str | None = None,
    reference: str = "the validation split",
    adjust_defect_share: bool = True,
    alpha: float = ALPHA,
    min_frames: int = MIN_FRAMES,
    min_reference: int = MIN_REFERENCE,
) -> OutputComparison:
    """Pure: a window's scores and reject rate against the validation scores (module docstring).

    ``ref_defect`` is 1 for a defective validation item; ``threshold`` the recipe's (the reference's
    reject rate is the share of validation scores at or above it). With ``adjust_defect_share`` the
    validation scores are mixed at the window's estimated defect share before comparing.
    """
    win = np.asarray(scores, np.float64)
    rej = np.asarray(rejected).astype(bool)
    ref, defect = np.asarray(ref_scores, np.float64), np.asarray(ref_defect).astype(bool)
    if len(win) != len(rej) or len(ref) != len(defect):
        raise MonitorError(
            f"{len(win)} scores for {len(rej)} decisions, or {len(ref)} reference scores for "
            f"{len(defect)} labels"
        )
    if len(win) < min_frames or len(ref) < min_reference:
        return _not_enough(
            recipe,
            "reference",
            reference,
            len(win),
            len(ref),
            f"{len(win):,} recent frames and {len(ref):,} validation scores; a comparison needs "
            f"{min_frames:,} and {min_reference:,}",
        )
    share = estimate_defect_share(win, ref, defect) if adjust_defect_share else None
    weights: np.ndarray | None = None
    shares: dict[str, float | None] | None = None
    if share is not None:
        # each class's validation items carry that class's share of the mix
        weights = np.where(defect, share / defect.sum(), (1.0 - share) / (~defect).sum())
        shares = {"window_estimate": share, "reference": float(defect.mean())}
        if share in (0.0, 1.0):  # a bound: the window would need more than all (or fewer than no) defects
            weights = np.where(
                defect, max(share, 1e-3) / defect.sum(), max(1.0 - share, 1e-3) / (~defect).sum()
            )
    w = _weights(len(ref), weights)
    st = _score_test(ref, win, w, alpha)
    ref_rate = float(np.sum(w * (ref >= threshold)))
    rt = _rate_test(int(rej.sum()), len(rej), ref_rate, st.n_reference, alpha)
    expected = (
        f"expected at the estimated {_pct(share)} defects (the validation split has {_pct(float(defect.mean()))})"
        if share is not None
        else f"on {reference}"
    )
    return OutputComparison(
        recipe,
        "reference",
        reference,
        _verdict(st, rt),
        _message(recipe, reference, st, rt, expected),
        len(win),
        len(ref),
        st,
        rt,
        shares,
    )


def compare_to_previous(
    scores: np.ndarray,
    rejected: np.ndarray,
    prev_scores: np.ndarray,
    prev_rejected: np.ndarray,
    *,
    recipe: str | None = None,
    previous: str = "the previous model",
    alpha: float = ALPHA,
    min_frames: int = MIN_FRAMES,
) -> OutputComparison:
    """Pure: a window's scores and reject rate against the previous model's last window on the same line."""
    win, rej = np.asarray(scores, np.float64), np.asarray(rejected).astype(bool)
    prev, prej = np.asarray(prev_scores, np.float64), np.asarray(prev_rejected).astype(bool)
    if len(win) != len(rej) or len(prev) != len(prej):
        raise MonitorError("scores and decisions must have the same length on each side")
    if len(win) < min_frames or len(prev) < min_frames:
        return _not_enough(
            recipe,
            "previous",
            previous,
            len(win),
            len(prev),
            f"{len(win):,} recent frames and {len(prev):,} of {previous}; a comparison needs "
            f"{min_frames:,} on each side",
        )
    st = _score_test(prev, win, None, alpha)
    rt = _rate_test(int(rej.sum()), len(rej), float(prej.mean()), float(len(prej)), alpha)
    return OutputComparison(
        recipe,
        "previous",
        previous,
        _verdict(st, rt),
        _message(recipe, previous, st, rt, f"for {previous}"),
        len(win),
        len(prev),
        st,
        rt,
    )


# --- a whole window, per recipe --------------------------------------------------------------------


def validation_scores(bundle: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The validation split's ``(scores, defect, recipes)`` a bundle ships in ``reference.npz``, or None.

    The monitoring reference's arrays when present (``recipes`` empty when it was exported without
    them), else the plain validation arrays of older bundles (class indices, no recipes).
    """
    if "reference.npz" not in (bundle.meta.get("files") or {}):
        return None
    arrays = bundle.load_arrays("reference.npz")
    if "monitor_val_scores" in arrays and len(arrays["monitor_val_scores"]):
        scores = np.asarray(arrays["monitor_val_scores"], np.float64)
        defect = np.asarray(arrays.get("monitor_val_labels", np.zeros(0)), np.int64) == 1
        recipes = np.asarray(arrays.get("monitor_val_recipes", np.zeros(0, np.str_))).astype(str)
    elif "val_scores" in arrays and len(arrays["val_scores"]):
        scores = np.asarray(arrays["val_scores"], np.float64)
        defect = np.asarray(arrays.get("val_labels", np.zeros(0)), np.int64) == int(bundle.positive_index)
        recipes = np.zeros(0, np.str_)
    else:
        return None
    if len(defect) != len(scores):
        return None
    return scores, defect, recipes if len(recipes) == len(scores) else np.zeros(0, np.str_)


def _worst(verdicts: Sequence[str]) -> str:
    known = [v for v in verdicts if v in VERDICTS]
    return max(known, key=VERDICTS.index) if known else "not enough data"


def output_report(
    scores: np.ndarray,
    rejected: np.ndarray,
    recipes: Sequence[str | None],
    versions: Sequence[str],
    *,
    current_version: str,
    threshold_for: Callable[[str | None], float] | None = None,
    validation: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    window: int = 1000,
    alpha: float = ALPHA,
    min_frames: int = MIN_FRAMES,
    min_reference: int = MIN_REFERENCE,
) -> dict[str, Any]:
    """Pure: per recipe, the last ``window`` decisions of ``current_version`` against the validation split
    (when ``validation`` and ``threshold_for`` are given) and against the previous version's last window.

    The inputs are the store's decisions in id order. The previous version is the one of the newest
    decision not made by ``current_version``. ``validation`` is :func:`validation_scores` of the current
    bundle; a recipe with fewer than ``min_reference`` validation items is compared with the whole split.
    """
    s, r = np.asarray(scores, np.float64), np.asarray(rejected).astype(bool)
    rec = list(recipes)
    ver = [str(v) for v in versions]
    if not (len(s) == len(r) == len(rec) == len(ver)):
        raise MonitorError("scores, decisions, recipes and versions must have the same length")
    if window < min_frames:
        raise MonitorError(
            f"the output window ({window}) must hold at least min_frames ({min_frames}) decisions"
        )
    ver_arr = np.array(ver, dtype=object)
    rec_arr = np.array(rec, dtype=object)
    current = ver_arr == current_version
    others = np.flatnonzero(~current)
    previous = str(ver_arr[others[-1]]) if len(others) else None
    out: dict[str, Any] = {
        "current_version": current_version,
        "previous_version": previous,
        "window": window,
        "alpha": alpha,
        "per_recipe": [],
    }
    if not current.any():
        return {
            **out,
            "available": False,
            "verdict": "not enough data",
            "reason": f"no decisions of the current model (version {current_version}) yet",
        }
    if validation is None or threshold_for is None:
        out["reference_reason"] = "the bundle ships no validation scores: only the previous model is compared"
    names = sorted({x for x in rec_arr[current]}, key=lambda x: (x is None, x or ""))
    for recipe in names:
        mine = np.flatnonzero(current & (rec_arr == recipe))[-window:]
        row: dict[str, Any] = {
            "recipe": recipe,
            "n": len(mine),
            "reject_rate": float(r[mine].mean()),
            "mean_score": float(s[mine].mean()),
        }
        if validation is not None and threshold_for is not None:
            vs, vd, vr = validation
            own = vr == (recipe if recipe is not None else "") if len(vr) else np.zeros(len(vs), bool)
            pooled = int(own.sum()) < min_reference
            what = "the validation split" if pooled else "this recipe's validation scores"
            pick = np.ones(len(vs), bool) if pooled else own
            row["reference"] = compare_to_reference(
                s[mine],
                r[mine],
                vs[pick],
                vd[pick],
                float(threshold_for(recipe)),
                recipe=recipe,
                reference=what,
                alpha=alpha,
                min_frames=min_frames,
                min_reference=min_reference,
            ).to_dict()
            if pooled and len(vr):
                row["reference"]["note"] = (
                    f"the validation split holds {int(own.sum())} items of this recipe: "
                    "compared with all of it"
                )
        if previous is not None:
            theirs = np.flatnonzero((ver_arr == previous) & (rec_arr == recipe))[-window:]
            row["previous"] = compare_to_previous(
                s[mine],
                r[mine],
                s[theirs],
                r[theirs],
                recipe=recipe,
                previous=f"version {previous}",
                alpha=alpha,
                min_frames=min_frames,
            ).to_dict()
        out["per_recipe"].append(row)
    verdicts = [
        c["verdict"] for row in out["per_recipe"] for c in (row.get("reference"), row.get("previous")) if c
    ]
    out["verdict"] = _worst(verdicts)
    out["available"] = True
    return out
