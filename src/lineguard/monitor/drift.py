"""Drift detectors as pure functions: sequential ones per frame, two-sample tests per window.

Sequential (fed one standardised value per signal and frame, vectorised over signals --
or over simulated chains, which is how :mod:`lineguard.monitor.calibrate` uses them):

- :func:`cusum_step`: the two-sided CUSUM of Page (1954). ``upper`` accumulates values
  above ``+k``, ``lower`` below ``-k``; each side fires when it passes ``h``. The frame
  where the side last left zero is the change-point estimate (``since``), and
  ``statistic / (frames since)`` + ``k`` the size of the shift in standard deviations.
- :func:`page_hinkley_step`: the Page-Hinkley test against the running mean of the
  stream itself (no reference needed; used for a signal without one).

Windowed, for reports: :func:`ks_test` (Kolmogorov-Smirnov), :func:`psi` (population
stability index over reference quantile bins), :func:`mmd_test` (maximum mean discrepancy
with an RBF kernel, median-heuristic bandwidth, permutation p-value).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lineguard.monitor.reference import MonitorError


@dataclass(frozen=True, slots=True)
class CusumState:
    """Two-sided CUSUM state per signal (arrays of one shape); ``t`` frames seen so far."""

    upper: np.ndarray
    lower: np.ndarray
    upper_since: np.ndarray  # frame index where the current upper excursion started
    lower_since: np.ndarray
    t: int = 0

    @classmethod
    def zeros(cls, shape: int | tuple[int, ...]) -> CusumState:
        z = np.zeros(shape, np.float64)
        return cls(z, z.copy(), np.zeros(shape, np.int64), np.zeros(shape, np.int64), 0)


def cusum_step(state: CusumState, z: np.ndarray, k: float | np.ndarray, h: float | np.ndarray
               ) -> tuple[CusumState, np.ndarray, np.ndarray]:
    """One frame: ``(new state, fired_up, fired_down)``.

    ``z`` is the standardised value per signal (in control: mean 0, sd 1). A side that fired
    keeps its statistic in the returned state (for the alarm to report) and restarts from
    zero on the next step. Pure: the input state is not changed.
    """
    t = state.t
    prev_up = np.where(state.upper > h, 0.0, state.upper)
    prev_lo = np.where(state.lower > h, 0.0, state.lower)
    up = np.maximum(prev_up + z - k, 0.0)
    lo = np.maximum(prev_lo - z - k, 0.0)
    up_since = np.where(prev_up > 0, state.upper_since, t)
    lo_since = np.where(prev_lo > 0, state.lower_since, t)
    return CusumState(up, lo, up_since, lo_since, t + 1), up > h, lo > h


def shift_estimate(statistic: float, frames: int, k: float) -> float:
    """The CUSUM's estimate of the shift (in sd) over its excursion: mean increment + k."""
    return float(statistic) / max(1, frames) + float(k)


@dataclass(frozen=True, slots=True)
class PageHinkleyState:
    """Page-Hinkley state: frames seen, running mean, cumulative sums and their extremes."""

    n: int = 0
    mean: float = 0.0
    up: float = 0.0  # sum of (x - mean - delta): rises under an upward shift
    up_min: float = 0.0
    down: float = 0.0  # sum of (x - mean + delta): falls under a downward shift
    down_max: float = 0.0


def page_hinkley_step(state: PageHinkleyState, x: float, delta: float, lam: float
                      ) -> tuple[PageHinkleyState, int]:
    """One value: ``(new state, +1 / -1 / 0)`` for an upward / downward change / none.

    The classic test against the stream's own running mean: ``up - min(up) > lam`` is an
    upward change, ``max(down) - down > lam`` a downward one; ``delta`` is the slack per
    value. After a detection the state restarts (so the running mean relearns the new level).
    """
    n = state.n + 1
    mean = state.mean + (x - state.mean) / n
    up = state.up + x - mean - delta
    down = state.down + x - mean + delta
    up_min, down_max = min(state.up_min, up), max(state.down_max, down)
    if up - up_min > lam:
        return PageHinkleyState(), 1
    if down_max - down > lam:
        return PageHinkleyState(), -1
    return PageHinkleyState(n, mean, up, up_min, down, down_max), 0


# --- windowed two-sample tests ------------------------------------------------------------------


@dataclass(frozen=True)
class TestResult:
    """A two-sample test: its statistic, a p-value (None for PSI) and whether it calls drift."""

    name: str
    statistic: float
    p_value: float | None
    drift: bool
    n_reference: int
    n_window: int

    def to_dict(self) -> dict[str, object]:
        return {"test": self.name, "statistic": self.statistic, "p_value": self.p_value, "drift": self.drift,
                "n_reference": self.n_reference, "n_window": self.n_window}


def _samples(reference: np.ndarray, window: np.ndarray, what: str, min_n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(reference, np.float64), np.asarray(window, np.float64)
    if len(a) < min_n or len(b) < min_n:
        raise MonitorError(f"{what} needs at least {min_n} values on each side, got {len(a)} and {len(b)}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise MonitorError(f"{what}: the samples hold NaN or infinity")
    return a, b


def ks_test(reference: np.ndarray, window: np.ndarray, alpha: float = 0.01) -> TestResult:
    """Two-sample Kolmogorov-Smirnov test of one signal (exact/asymptotic p-value from scipy)."""
    from scipy.stats import ks_2samp

    a, b = _samples(reference, window, "the KS test")
    res = ks_2samp(a, b)
    p = float(res.pvalue)
    return TestResult("ks", float(res.statistic), p, p < alpha, len(a), len(b))


def psi(reference: np.ndarray, window: np.ndarray, bins: int = 10, threshold: float = 0.25) -> TestResult:
    """Population stability index over ``bins`` reference-quantile bins (0.1 moderate, 0.25 major shift).

    Bins are open-ended at both sides; empty bins get a share of 0.5 / n so the log is finite.
    """
    a, b = _samples(reference, window, "PSI")
    edges = np.unique(np.quantile(a, np.linspace(0, 1, bins + 1)[1:-1]))
    pa = np.bincount(np.searchsorted(edges, a, side="right"), minlength=len(edges) + 1).astype(np.float64)
    pb = np.bincount(np.searchsorted(edges, b, side="right"), minlength=len(edges) + 1).astype(np.float64)
    pa = np.maximum(pa, 0.5) / max(len(a), 1)
    pb = np.maximum(pb, 0.5) / max(len(b), 1)
    value = float(np.sum((pb - pa) * np.log(pb / pa)))
    return TestResult("psi", value, None, value > threshold, len(a), len(b))


def _sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = np.sum(x * x, 1)[:, None] + np.sum(y * y, 1)[None, :] - 2.0 * x @ y.T
    return np.asarray(np.maximum(d, 0.0))


def mmd2_unbiased(k_matrix: np.ndarray, n: int) -> float:
    """Unbiased MMD^2 from the pooled kernel matrix whose first ``n`` rows are one sample."""
    kxx, kyy, kxy = k_matrix[:n, :n], k_matrix[n:, n:], k_matrix[:n, n:]
    m = len(k_matrix) - n
    sxx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def mmd_test(reference: np.ndarray, window: np.ndarray, *, alpha: float = 0.01, permutations: int = 200,
             bandwidth: float | None = None, seed: int = 0) -> TestResult:
    """MMD two-sample test with an RBF kernel on N x k samples (e.g. whitened embeddings).

    The bandwidth is the median pairwise distance of the pooled sample unless given; the
    p-value is (1 + #permutations with MMD^2 >= observed) / (1 + permutations), seeded.
    """
    x, y = np.atleast_2d(np.asarray(reference, np.float64)), np.atleast_2d(np.asarray(window, np.float64))
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise MonitorError(f"MMD needs two N x k samples of the same k, got {x.shape} and {y.shape}")
    if len(x) < 2 or len(y) < 2:
        raise MonitorError(f"MMD needs at least 2 rows on each side, got {len(x)} and {len(y)}")
    pooled = np.concatenate([x, y])
    d2 = _sq_dists(pooled, pooled)
    if bandwidth is None:
        off = d2[np.triu_indices(len(pooled), 1)]
        med = float(np.median(off))
        bandwidth = float(np.sqrt(0.5 * med)) if med > 0 else 1.0
    kmat = np.exp(-d2 / (2.0 * bandwidth * bandwidth))
    n = len(x)
    observed = mmd2_unbiased(kmat, n)
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(permutations):
        idx = rng.permutation(len(pooled))
        if mmd2_unbiased(kmat[np.ix_(idx, idx)], n) >= observed:
            exceed += 1
    p = (1 + exceed) / (1 + permutations)
    return TestResult("mmd", observed, p, p < alpha, len(x), len(y))
