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
4. **Estimated parameters.** The reference itself is a sample: each chain shifts and
   scales its values by the standardisation's own sampling error (1/sqrt(n) of the
   recipe's reference images), so the promise is an average over references of that size,
   not a promise for a perfect one -- a small reference gets a larger ``h``.

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


def calibrate_cusum(
    z: np.ndarray,
    arl0: float,
    *,
    k: float = 0.5,
    block: int = 1,
    group_sizes: np.ndarray | None = None,
    steps: int = 1000,
    chains: int = 1000,
    seed: int = 0,
) -> Calibration:
    """Thresholds ``h`` per column of ``z`` (reference standardised values, n x m) so that the m
    two-sided CUSUMs together alarm on average once per ``arl0`` in-control frames.

    A signal that is constant over the reference gets ``h = inf`` (never fires): there is no
    in-control spread to promise anything against.

    ``group_sizes`` (n): the number of reference values each row's standardisation was fitted
    on (the estimation error to simulate); None simulates a perfectly known reference.
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
        paths = simulate_paths(zz[:, j], steps, chains, rng, block=block, group_sizes=group_sizes)
        hs[j], fitted[j] = threshold_for_rate(excursion_peaks(paths, k), steps * chains, 1.0 / per)
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
