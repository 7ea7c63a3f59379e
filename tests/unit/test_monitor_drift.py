"""Sequential detectors find a known shift and stay quiet without one; window tests on known distributions."""

from __future__ import annotations

import numpy as np
import pytest

from lineguard.monitor import (
    CusumState,
    MonitorError,
    PageHinkleyState,
    cusum_step,
    ks_test,
    mmd_test,
    page_hinkley_step,
    psi,
)
from lineguard.monitor.drift import shift_estimate


def _run_cusum(z: np.ndarray, k: float, h: float) -> list[tuple[int, int, str, float]]:
    state = CusumState.zeros(1)
    fired = []
    for t, v in enumerate(z):
        state, up, down = cusum_step(state, np.array([v]), k, h)
        if up[0] or down[0]:
            side = "up" if up[0] else "down"
            since = int(state.upper_since[0] if up[0] else state.lower_since[0])
            stat = float(state.upper[0] if up[0] else state.lower[0])
            fired.append((t, since, side, shift_estimate(stat, t - since + 1, k)))
    return fired


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_cusum_finds_a_one_sd_shift_and_its_start(sign: float) -> None:
    rng = np.random.default_rng(3)
    z = rng.standard_normal(1500)
    z[1000:] += sign * 1.0
    fired = _run_cusum(z, 0.5, 8.0)
    before = [f for f in fired if f[0] < 1000]
    after = [f for f in fired if f[0] >= 1000]
    assert not before
    t, since, side, shift = after[0]
    assert side == ("up" if sign > 0 else "down")
    assert t - 1000 < 60  # ARL at a 1 sd shift with k=0.5, h=8 is ~17 frames
    assert abs(since - 1000) < 25
    assert 0.5 < shift < 2.5


def test_cusum_is_pure_and_restarts_after_firing() -> None:
    s0 = CusumState.zeros(2)
    s1, up, _ = cusum_step(s0, np.array([10.0, 0.0]), 0.5, 5.0)
    assert up.tolist() == [True, False] and s0.upper.tolist() == [0.0, 0.0]
    s2, up2, _ = cusum_step(s1, np.array([0.0, 0.0]), 0.5, 5.0)
    assert s2.upper.tolist() == [0.0, 0.0] and not up2.any()


def test_clean_stream_stays_quiet() -> None:
    """h = 10, k = 0.5: two-sided in-control ARL ~ 5 x 10^4 frames; 200,000 clean frames give a handful."""
    rng = np.random.default_rng(4)
    fired = _run_cusum(rng.standard_normal(200_000), 0.5, 10.0)
    assert len(fired) <= 10, len(fired)


def test_page_hinkley_detects_a_level_change_both_ways() -> None:
    rng = np.random.default_rng(5)
    for sign in (1.0, -1.0):
        x = np.concatenate([rng.normal(0, 1, 500), rng.normal(sign * 2.0, 1, 300)])
        state, hits = PageHinkleyState(), []
        for t, v in enumerate(x):
            state, d = page_hinkley_step(state, float(v), 0.25, 30.0)
            if d:
                hits.append((t, d))
        assert hits and hits[0][0] >= 500 and hits[0][0] < 560 and hits[0][1] == int(sign)


def test_ks_psi_mmd_on_known_distributions() -> None:
    rng = np.random.default_rng(6)
    ref, same, moved = rng.normal(0, 1, 2000), rng.normal(0, 1, 1000), rng.normal(0.5, 1, 1000)
    assert not ks_test(ref, same).drift and ks_test(ref, moved).drift
    assert ks_test(ref, moved).statistic == pytest.approx(0.197, abs=0.05)  # sup |Phi(x) - Phi(x - 0.5)|
    p_same, p_moved = psi(ref, same), psi(ref, moved)
    assert p_same.statistic < 0.05 and not p_same.drift
    assert 0.15 < p_moved.statistic < 0.4  # PSI of a 0.5 sd shift is ~0.25 (= the KL-type sum)
    x = rng.normal(size=(200, 4))
    assert not mmd_test(x, rng.normal(size=(200, 4)), permutations=100).drift
    scaled = rng.normal(size=(200, 4)) * np.array([1.0, 1.0, 1.0, 2.0])  # same mean, other spread: KS-blind
    res = mmd_test(x, scaled, permutations=100)
    assert res.drift and res.p_value is not None and res.p_value <= 0.02


def test_tests_name_bad_input() -> None:
    with pytest.raises(MonitorError, match="at least 2"):
        ks_test(np.zeros(1), np.zeros(5))
    with pytest.raises(MonitorError, match="NaN"):
        psi(np.array([1.0, np.nan, 2.0]), np.zeros(5))
    with pytest.raises(MonitorError, match="same k"):
        mmd_test(np.zeros((5, 2)), np.zeros((5, 3)))
