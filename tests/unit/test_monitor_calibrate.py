"""Calibration by simulation hits its run length: against the classic CUSUM table and in simulation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lineguard.monitor import MonitorError, calibrate_cusum
from lineguard.monitor.calibrate import run_lengths, simulate_paths


@pytest.mark.parametrize(("arl", "h_table"), [(168.0, 4.0), (465.0, 5.0)])
def test_gaussian_reference_gives_the_textbook_threshold(arl: float, h_table: float) -> None:
    """Two-sided CUSUM, k = 0.5: ARL0 168 at h = 4 and 465 at h = 5 (Montgomery, SQC, table 9.3 halved)."""
    z = np.random.default_rng(1).standard_normal(20_000)
    cal = calibrate_cusum(z, arl, k=0.5, seed=0)
    assert cal.h[0] == pytest.approx(h_table, abs=0.25)


def test_skewed_reference_hits_its_run_length_in_simulation() -> None:
    """A heavy-tailed, skewed signal (standardised exponential): the stated ARL holds within 25 %."""
    rng = np.random.default_rng(2)
    z = rng.exponential(1.0, 3000) - 1.0
    cal = calibrate_cusum(z, 400.0, k=0.5, seed=0)
    stream = rng.choice(z, size=(400_000, 1))
    alarms = run_lengths(stream, cal.k, cal.h)
    arl = len(stream) / len(alarms)
    assert 0.75 * 400 < arl < 1.35 * 400, arl


def test_bonferroni_split_holds_for_all_signals_together() -> None:
    rng = np.random.default_rng(3)
    z = rng.standard_normal((4000, 3))
    cal = calibrate_cusum(z, 300.0, seed=0)
    assert cal.per_signal_arl == pytest.approx(900.0)
    stream = rng.standard_normal((300_000, 3))
    arl = len(stream) / len(run_lengths(stream, cal.k, cal.h))
    assert 0.8 * 300 < arl < 1.5 * 300, arl  # rates add up at most: the union is at least as long


def test_rare_false_alarms_are_extrapolated_and_monotone() -> None:
    z = np.random.default_rng(4).standard_normal(5000)
    hs = [calibrate_cusum(z, a, seed=0).h[0] for a in (1e3, 1e4, 1e5, 1e6)]
    assert all(b > a for a, b in itertools.pairwise(hs))
    assert hs[2] == pytest.approx(10.5, abs=0.6)  # Siegmund's approximation for N(0,1), k=0.5, ARL 1e5


def test_estimation_error_raises_the_threshold() -> None:
    z = np.random.default_rng(5).standard_normal(5000)
    exact = calibrate_cusum(z, 1e4, seed=0).h[0]
    small = calibrate_cusum(z, 1e4, group_sizes=np.full(5000, 50), seed=0).h[0]
    assert small > exact + 0.5


def test_block_bootstrap_keeps_runs() -> None:
    v = np.arange(100, dtype=np.float64)
    paths = simulate_paths(v, 30, 4, np.random.default_rng(0), block=10)
    assert np.all(np.diff(paths[:10], axis=0) == 1.0)


def test_constant_signal_never_fires_and_bad_input_is_named() -> None:
    z = np.column_stack([np.random.default_rng(6).standard_normal(500), np.zeros(500)])
    cal = calibrate_cusum(z, 100.0, seed=0)
    assert np.isfinite(cal.h[0]) and cal.h[1] == np.inf
    with pytest.raises(MonitorError, match="arl0"):
        calibrate_cusum(z, 0.5)
    with pytest.raises(MonitorError, match="at least 10"):
        calibrate_cusum(np.zeros(3), 100.0)


def test_zero_inflated_signal_with_no_lower_tail_calibrates() -> None:
    """The share of clipped pixels on grey solar cells: zero on 98.5 % of the reference, rarely large. Its
    lower CUSUM side can never start an excursion at the slacks the estimation error asks for; that side
    contributes no false alarms (it used to stop the export: "too few excursions to fit their tail"), and
    the upper side still holds its run length."""
    rng = np.random.default_rng(7)
    # (clipped pixels of the sampled grid, reference images): the ELPV training split's values
    counts = [(0, 1502), (1, 6), (2, 2), (3, 2), (4, 2), (5, 5), (6, 3), (8, 3), (9, 1), (10, 1), (12, 6),
              (14, 3), (15, 1), (17, 1), (18, 1), (20, 2), (22, 1), (28, 1), (30, 1), (39.5, 12)]
    raw = np.repeat([float(c) for c, _ in counts], [n for _, n in counts])
    z = (raw - raw.mean()) / raw.std()
    assert float((-z).max()) < 0.2  # the lower side's largest step
    cal = calibrate_cusum(z, 2000.0, group_sizes=np.full(len(z), len(z)), seed=0)
    assert np.isfinite(cal.h[0])
    stream = rng.choice(z, size=(400_000, 1))
    alarms = run_lengths(stream, cal.k, cal.h)
    assert len(alarms) == 0 or len(stream) / len(alarms) > 0.75 * 2000
