"""CUSUM thresholds calibrated by simulation to a target average run length between false alarms.

The promise: on a line that looks like the reference, the monitor raises on average no
more than one false alarm per ``arl0`` frames, over all its signals together. How it is
kept without a reference of ten times ``arl0`` frames:

1. **Bonferroni split.** ``m`` signals share the budget: each is calibrated to a run
   length of ``m * arl0`` (false-alarm rates add up at most).
2. **Renewal, not run lengths.** A CUSUM side restarts at zero after every excursion, so
   its false-alarm rate is the rate of excursions whose peak passes ``h``. The simulation
   resamples the reference's standardised values (in blocks of ``block`` frames, for a
   reference recorded as a stream) over many parallel chains, records the peak of every
   excursion, and reads the rate for every ``h`` off one simulation.
3. **Exponential tail.** Excursion peaks of a CUSUM have an exponential tail (Cramer-
   Lundberg: P(peak > h) ~ C exp(-theta h)); the rate is fitted on the part of the tail
   the simulation sees well and extrapolated to the rare false-alarm rates asked for.
4. **Estimated parameters, averaged per reference.** The reference itself is a sample:
   the line's frames, standardised with the reference's centre and scale, are off by the
   standardisation's own sampling error -- a shift ``delta ~ N(0, 1/n)`` and a scale
   ``s ~ 1 + N(0, (kurtosis_excess + 2) / 4n)`` for a recipe of ``n`` reference images
   (the scale error follows the signal's own tails). For one such error, the CUSUM of the
   line's values is ``s`` times a CUSUM of the reference's own values with the slack
   ``k / s -+ delta`` (upper / lower side), so one simulation of the unperturbed paths gives
   every error's excursion rate: peaks are recorded for a grid of slacks, each slack's
   tail fitted on its own, and the rates averaged over the bootstrap draws. (The first
   version drew shift and scale independently and Gaussian, and pooled the peaks of all
   chains into one tail fit: for the share of clipped pixels -- zero on most frames, a long
   right tail -- the line alarmed ~20x more often than promised on that one signal, 3-4x
   over all; see docs/benchmarks.md, Monitoring.) The promise is an average over references of that size, not a
   promise for a perfect one -- a small reference gets a larger ``h``.

Pure numpy, seeded: the same reference and settings give the same thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lineguard.monitor.reference import MonitorError


@dataclass(frozen=True)
class Calibration:
    """Per signal: CUSUM slack ``k`` and threshold ``h`` for a combined in-control run length ``arl0``."""

    k: float
    h: np.ndarray
    arl0: float
    per_signal_arl: float
    fitted: np.ndarray  # per signal: True when h came from the tail fit, False when read off directly

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"k": np.array(self.k), "h": self.h, "arl0": np.array(self.arl0),
                "per_signal_arl": np.array(self.per_signal_arl), "fitted": self.fitted}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Calibration:
        return cls(float(arrays["k"]), np.asarray(arrays["h"], np.float64), float(arrays["arl0"]),
                   float(arrays["per_signal_arl"]), np.asarray(arrays["fitted"], bool))


def simulate_paths(values: np.ndarray, steps: int, chains: int, rng: np.random.Generator, *, block: int = 1,
                   group_sizes: np.ndarray | None = None) -> np.ndarray:
    """steps x chains resampled values: blocks of ``block`` consecutive reference values per chain,
    each chain shifted and scaled by the sampling error of a standardisation fitted on
    ``group_sizes[i]`` values (the group of the chain's first draw)."""
    v = np.asarray(values, np.float64)
    n = len(v)
    block = max(1, min(int(block), n))
    n_blocks = -(-steps // block)
    starts = rng.integers(0, n - block + 1, size=(n_blocks, chains))
    idx = (starts[:, None, :] + np.arange(block)[None, :, None]).reshape(n_blocks * block, chains)[:steps]
    out = v[idx]
    if group_sizes is not None:
        sizes = np.asarray(group_sizes, np.float64)[idx[0]]
        shift = rng.standard_normal(chains) / np.sqrt(sizes)
        scale = 1.0 + rng.standard_normal(chains) / np.sqrt(2.0 * sizes)
        out = (out + shift) * np.clip(scale, 0.5, 1.5)
    return np.asarray(out)


def excursion_peaks(paths: np.ndarray, k: float) -> np.ndarray:
    """Peaks of every excursion of both CUSUM sides over steps x chains paths (no threshold)."""
    chains = paths.shape[1]
    peaks: list[np.ndarray] = []
    for sign in (1.0, -1.0):
        s = np.zeros(chains)
        peak = np.zeros(chains)
        for row in paths:
            s = np.maximum(s + sign * row - k, 0.0)
            peak = np.maximum(peak, s)
            ended = (s == 0.0) & (peak > 0.0)
            if ended.any():
                peaks.append(peak[ended])
                peak[ended] = 0.0
        peaks.append(peak[peak > 0.0])  # excursions still open at the end (conservative)
    return np.concatenate(peaks) if peaks else np.zeros(0)


def threshold_for_rate(peaks: np.ndarray, frames: int, rate: float, *, min_count: int = 30,
                       direct_count: int = 400) -> tuple[float, bool]:
    """The ``h`` whose excursion peaks pass it ``rate`` times per frame: (h, extrapolated?).

    Read off the sorted peaks when at least ``direct_count`` of them may pass; otherwise
    the log-count of the peaks above h is fitted linearly in h over the tail (from
    ``min_count`` peaks upwards) and extrapolated.
    """
    if len(peaks) == 0:
        return 0.0, False
    p = np.sort(peaks)[::-1]
    want = rate * frames  # how many peaks may pass h
    if want >= direct_count and int(want) < len(p):
        return float(p[int(want)]), False
    top = p[: max(min_count * 20, 200)]
    counts = np.arange(1, len(top) + 1, dtype=np.float64)
    sel = counts >= min_count
    if sel.sum() < 5:
        raise MonitorError("the calibration saw too few excursions to fit their tail; use more reference "
                           "values, more steps or a smaller k")
    slope, intercept = np.polyfit(top[sel], np.log(counts[sel]), 1)
    if slope >= 0:
        raise MonitorError("the calibration's excursion tail does not decay; the reference values are degenerate")
    return float((np.log(want) - intercept) / slope), True


def _side_peaks(paths: np.ndarray, ks: np.ndarray) -> list[np.ndarray]:
    """Excursion peaks of the upper CUSUM side of steps x chains ``paths``, one array per slack in ``ks``."""
    chains = paths.shape[1]
    kk = np.asarray(ks, np.float64)[:, None]
    s = np.zeros((len(kk), chains))
    peak = np.zeros_like(s)
    found_k: list[np.ndarray] = []
    found_v: list[np.ndarray] = []
    for row in paths:
        s += row
        s -= kk
        np.maximum(s, 0.0, out=s)
        np.maximum(peak, s, out=peak)
        ended = (s == 0.0) & (peak > 0.0)
        if ended.any():
            ki, _ = np.nonzero(ended)
            found_k.append(ki)
            found_v.append(peak[ended])
            peak[ended] = 0.0
    ki, _ = np.nonzero(peak > 0.0)  # excursions still open at the end (conservative)
    found_k.append(ki)
    found_v.append(peak[peak > 0.0])
    all_k, all_v = np.concatenate(found_k), np.concatenate(found_v)
    return [all_v[all_k == i] for i in range(len(kk))]


NEVER = -1e3  # a log rate whose exp is 0.0 and that interpolates without NaNs (unlike -inf)


class _Silent:
    """The tail of a side whose CUSUM never starts an excursion at this slack: the reference's values on that
    side never exceed the slack (a zero-inflated signal such as the share of clipped pixels has no lower
    tail), so no threshold can be crossed -- a rate of zero for every ``h``."""

    def log_rate(self, h: np.ndarray) -> np.ndarray:
        return np.full(np.shape(h), NEVER)


class _Tail:
    """Excursion rate per frame above ``h`` for one slack: counted where the simulation saw at
    least ``min_count`` peaks above ``h``, an exponential fit of the tail beyond."""

    def __init__(self, peaks: np.ndarray, frames: int, min_count: int = 30) -> None:
        self.frames = frames
        self.p = np.sort(peaks)[::-1]
        self.min_count = min_count
        top = self.p[: max(min_count * 20, 200)]
        counts = np.arange(1, len(top) + 1, dtype=np.float64)
        sel = counts >= min_count
        if sel.sum() < 5:
            raise MonitorError("the calibration saw too few excursions to fit their tail; use more reference "
                               "values, more steps or a smaller k")
        slope, intercept = np.polyfit(top[sel], np.log(counts[sel]), 1)
        if slope >= 0:
            raise MonitorError("the calibration's excursion tail does not decay; the reference values are degenerate")
        self.slope, self.intercept = float(slope), float(intercept)
        self.h_fit = float(self.p[min_count - 1])  # beyond this h, the fit

    def log_rate(self, h: np.ndarray) -> np.ndarray:
        h = np.asarray(h, np.float64)
        counted = np.searchsorted(-self.p, -h, side="left").astype(np.float64)  # peaks > h
        fitted = self.intercept + self.slope * h
        out = np.where(h > self.h_fit, fitted, np.log(np.maximum(counted, 0.5)))
        return np.asarray(out - np.log(self.frames))


def _threshold_with_error(paths: np.ndarray, values: np.ndarray, k: float, rate: float, sizes: np.ndarray,
                          rng: np.random.Generator, groups: np.ndarray | None = None, draws: int = 256) -> float:
    """``h`` whose false-alarm rate, averaged over the standardisation's sampling error, is ``rate``.

    ``values``: the signal's reference values (standardised); ``sizes``: per reference row,
    the number of values its standardisation was fitted on. The error is drawn by the
    bootstrap -- ``draws`` resamples of that many values, each giving the centre and scale a
    reference of that size might have had -- so a skewed signal's mean and standard
    deviation err together, as they do (a reference that saw few of a rare bright frame
    underestimates both, and the line then looks shifted up *and* wider).
    """
    v = np.asarray(values, np.float64)
    sz = np.asarray(sizes, np.int64)
    g = np.asarray(groups) if groups is not None else sz
    uniq, first, counts = np.unique(g, return_index=True, return_counts=True)
    shares = counts / counts.sum()
    cases = []  # (weight, scale, slack of the upper side, slack of the lower side)
    for gi, n, share in zip(uniq, sz[first], shares, strict=True):
        n = int(max(2, min(n, 100_000)))
        own = v[g == gi] if groups is not None else v
        for _ in range(draws):
            sample = own[rng.integers(0, len(own), n)]
            sd = max(float(sample.std()), 1e-9)
            delta = -float(sample.mean()) / sd  # the line's values, standardised by this draw's centre and scale
            sc = float(np.clip(1.0 / sd, 0.5, 2.0))
            cases.append((share / draws, sc, k / sc - delta, k / sc + delta))
    c = np.array(cases)
    ks_needed = np.concatenate([c[:, 2], c[:, 3]])
    lo_k = max(float(ks_needed.min()), 0.05)
    grid = np.linspace(lo_k, max(float(ks_needed.max()), lo_k + 1e-3), 13)
    frames = paths.size
    tails: list[list[_Tail | _Silent]] = []
    usable = len(grid)
    for sign in (1.0, -1.0):
        side: list[_Tail | _Silent] = []
        reach = float((sign * v).max())  # the largest step this side's CUSUM can take, before the slack
        for slack, p in zip(grid, _side_peaks(sign * paths, grid), strict=True):
            if reach <= slack:
                side.append(_Silent())  # cannot start an excursion at this slack (nor at any larger one)
                continue
            try:
                side.append(_Tail(p, frames))
            except MonitorError:
                break  # slacks this large hardly ever start an excursion: the last fitted slack stands in
        if not side:
            raise MonitorError("the calibration saw too few excursions to fit their tail; use more reference "
                               "values, more steps or a smaller k")
        tails.append(side)
        if not all(isinstance(t, _Silent) for t in side):
            usable = min(usable, len(side))
    grid = grid[:max(usable, 2)] if usable >= 2 else grid[:1].repeat(2) + np.array([0.0, 1e-3])
    tails = [side[:len(grid)] if len(side) >= len(grid) else side + [side[-1]] * (len(grid) - len(side))
             for side in tails]

    def total_rate(h: float) -> float:
        out = 0.0
        for side, col in ((0, 2), (1, 3)):
            hs = h / c[:, 1]
            lr = np.stack([t.log_rate(hs) for t in tails[side]])  # grid x cases
            kk = np.clip(c[:, col], grid[0], grid[-1])
            i = np.clip(np.searchsorted(grid, kk) - 1, 0, len(grid) - 2)
            f = (kk - grid[i]) / (grid[i + 1] - grid[i])
            cols = np.arange(len(c))
            interp = lr[i, cols] * (1 - f) + lr[i + 1, cols] * f
            out += float(np.sum(c[:, 0] * np.exp(interp)))
        return out

    lo, hi = 0.0, 1.0
    while total_rate(hi) > rate:
        hi *= 2.0
        if hi > 1e6:
            raise MonitorError("the calibration found no threshold for the asked run length")
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if total_rate(mid) > rate else (lo, mid)
    return hi


def calibrate_cusum(
    z: np.ndarray,
    arl0: float,
    *,
    k: float = 0.5,
    block: int = 1,
    group_sizes: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    steps: int = 1000,
    chains: int = 1000,
    seed: int = 0,
) -> Calibration:
    """Thresholds ``h`` per column of ``z`` (reference standardised values, n x m) so that the m
    two-sided CUSUMs together alarm on average once per ``arl0`` in-control frames.

    A signal that is constant over the reference gets ``h = inf`` (never fires): there is no
    in-control spread to promise anything against.

    ``group_sizes`` (n): the number of reference values each row's standardisation was fitted
    on (the estimation error to average over, see the module docstring); None calibrates
    for a perfectly known reference. ``groups`` (n, optional): which standardisation each row
    belongs to (its recipe), so each recipe's error is drawn from its own values.
    """
    zz = np.asarray(z, np.float64)
    if zz.ndim == 1:
        zz = zz[:, None]
    if zz.ndim != 2 or len(zz) < 10 or not np.all(np.isfinite(zz)):
        raise MonitorError(f"calibration needs at least 10 finite reference values per signal, got {zz.shape}")
    if not arl0 > 1:
        raise MonitorError(f"the target run length arl0 must be > 1 frame, got {arl0}")
    if not k > 0:
        raise MonitorError(f"the CUSUM slack k must be > 0, got {k}")
    m = zz.shape[1]
    per = float(arl0) * m
    rng = np.random.default_rng(seed)
    hs, fitted = np.zeros(m), np.zeros(m, bool)
    for j in range(m):
        if float(np.std(zz[:, j])) < 1e-9:
            hs[j] = np.inf  # constant in the reference: no in-control spread to calibrate against
            continue
        paths = simulate_paths(zz[:, j], steps, chains, rng, block=block)
        if group_sizes is None:
            hs[j], fitted[j] = threshold_for_rate(excursion_peaks(paths, k), steps * chains, 1.0 / per)
        else:
            hs[j], fitted[j] = _threshold_with_error(paths, zz[:, j], k, 1.0 / per, np.asarray(group_sizes), rng, groups), True
    return Calibration(float(k), hs, float(arl0), per, fitted)


def run_lengths(z_stream: np.ndarray, k: float, h: np.ndarray) -> np.ndarray:
    """Frame indices at which a bank of two-sided CUSUMs (one per column) would alarm, any signal.

    For checking a calibration on a long stream: T x m standardised values in, the sorted
    alarm frames out (each alarm restarts the side that fired, as the Monitor does).
    """
    zs = np.asarray(z_stream, np.float64)
    m = zs.shape[1]
    up, lo = np.zeros(m), np.zeros(m)
    hh = np.broadcast_to(np.asarray(h, np.float64), (m,))
    alarms = []
    for t, row in enumerate(zs):
        up = np.maximum(up + row - k, 0.0)
        lo = np.maximum(lo - row - k, 0.0)
        fu, fl = up > hh, lo > hh
        if fu.any() or fl.any():
            alarms.append(t)
            up = np.where(fu, 0.0, up)
            lo = np.where(fl, 0.0, lo)
    return np.array(alarms, np.int64)


def count_alarms(z_stream: np.ndarray, k: float, h: np.ndarray) -> int:
    """How many alarms a bank of two-sided CUSUMs raises on a T x m stream of standardised values."""
    return len(run_lengths(z_stream, k, h))
