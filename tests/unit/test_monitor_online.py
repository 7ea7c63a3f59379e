"""The per-frame Monitor: quiet on a clean stream, a known shift fires with its signal and start, estimates
marked untrusted under drift, status for /metrics, and the reference shipped in (and read from) a bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lineguard.monitor import IMAGE_SIGNALS, Monitor, MonitorError, Reference, build_reference, load_reference
from tests.unit._edge_bundles import make_toy_bundle

M = len(IMAGE_SIGNALS)


def _reference(seed: int = 0, n: int = 600, emb_dim: int = 6) -> Reference:
    rng = np.random.default_rng(seed)
    recipes = np.array(["vanilla", "chocolate"] * (n // 2))
    base = np.where((recipes == "vanilla")[:, None], 150.0, 60.0)  # recipes differ a lot: standardised apart
    values = base + rng.normal(0, 5, (n, M))
    emb = rng.normal(size=(n, emb_dim)) + (recipes == "vanilla")[:, None] * 3.0
    val_p = rng.random(300)
    return build_reference(values, recipes, emb, val_scores=val_p, val_labels=(rng.random(300) < val_p).astype(int))


def _frame(rng: np.random.Generator, recipe: str, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    base = 150.0 if recipe == "vanilla" else 60.0
    x = base + rng.normal(0, 5, M)
    x[0] += shift * 5
    return x, rng.normal(size=6) + (recipe == "vanilla") * 3.0


@pytest.fixture(scope="module")
def reference() -> Reference:
    return _reference()


def test_clean_stream_with_recipe_changes_is_quiet(reference: Reference) -> None:
    mon = Monitor(reference, arl0=50_000)
    rng = np.random.default_rng(1)
    alarms = []
    for i in range(6000):
        recipe = "vanilla" if (i // 500) % 2 == 0 else "chocolate"  # blocks, as a line runs
        x, e = _frame(rng, recipe)
        alarms += mon.update(x, e, float(rng.random()), recipe, time=1.8e9 + i)
    assert alarms == [] and mon.in_distribution
    status = mon.status()
    json.dumps(status)
    assert status["frames"] == 6000 and status["active_alarms"] == [] and 0 <= max(status["cusum_level"].values()) < 1


def test_a_brightness_shift_fires_with_signal_start_and_size(reference: Reference) -> None:
    mon = Monitor(reference, arl0=50_000, clear_after=200)
    rng = np.random.default_rng(2)
    fired = []
    for i in range(600):
        x, e = _frame(rng, "chocolate", shift=-1.5 if i >= 300 else 0.0)
        fired += mon.update(x, e, 0.1, "chocolate")
        if fired:
            break
    first = fired[0]
    assert first.signal == "brightness" and first.direction == "down"
    assert 300 <= first.frame < 340 and abs(first.since - 300) < 15 and -2.5 < first.shift_sd < -0.8
    assert not mon.in_distribution and "brightness down" in first.message()
    est = mon.estimate()
    assert not est.trustworthy and "brightness" in est.reason
    for _ in range(400):  # back to normal: the alarm clears after clear_after quiet frames
        x, e = _frame(rng, "chocolate")
        mon.update(x, e, 0.1, "chocolate")
    assert mon.in_distribution and mon.status()["alarms_total"] >= 1


def test_embedding_shift_fires_the_embedding_signal(reference: Reference) -> None:
    mon = Monitor(reference, arl0=50_000)
    rng = np.random.default_rng(3)
    fired = []
    for _ in range(300):
        x, e = _frame(rng, "vanilla")
        fired += mon.update(x, e + 4.0, 0.1, "vanilla")  # a new background: the model sees another world
    assert fired and fired[0].signal.startswith("embedding_") and fired[0].frame < 30


def test_estimate_report_feedback_and_kpis(reference: Reference) -> None:
    mon = Monitor(reference, arl0=50_000, thresholds={"vanilla": 0.4}, default_threshold=0.5)
    rng = np.random.default_rng(4)
    for i in range(800):
        x, e = _frame(rng, "vanilla")
        p = float(rng.random())
        mon.update(x, e, p, "vanilla", time=1.8e9 + i)
        mon.feedback(p, p >= 0.4, bool(rng.random() < p), "vanilla", time=1.8e9 + i)
    est = mon.estimate("vanilla")
    assert est.trustworthy and est.n == 800 and 0.6 < est.balanced_accuracy < 0.9
    assert mon.estimate(method="atc").method == "atc"
    rep = mon.report(permutations=30)
    assert set(rep["signals"]) == set(reference.names)
    assert not rep["embedding_mmd"]["drift"] and not rep["signals"]["brightness"]["ks"]["drift"]
    fb = mon.feedback_report()
    assert abs(fb["measured"]["balanced_accuracy"] - fb["estimated"]["balanced_accuracy"]) < 0.06
    assert not fb["concept_drift"]["flagged"]
    rows = mon.kpis(("recipe",))
    assert rows[0]["inspected"] == 800 and rows[0]["feedback"] == 800
    with pytest.raises(MonitorError, match="no scored frames"):
        mon.estimate("chocolate")


def test_reference_round_trips_through_the_arrays(reference: Reference) -> None:
    back = Reference.from_arrays(reference.to_arrays())
    assert back.names == reference.names and back.recipes == ("chocolate", "vanilla")
    assert np.allclose(back.reference_z(), reference.reference_z(), atol=1e-4)
    no_emb = {k: v for k, v in reference.to_arrays().items() if not k.startswith("embedding_")}
    assert Reference.from_arrays(no_emb).names == IMAGE_SIGNALS  # a re-bundle with another embedding width
    with pytest.raises(MonitorError, match="re-export"):
        Reference.from_arrays({"image_stats": np.zeros((2, 2))})
    broken = {**reference.to_arrays(), "monitor_scale": np.zeros((3, len(reference.names)))}
    with pytest.raises(MonitorError, match="monitor_scale"):
        Reference.from_arrays(broken)


def test_bundle_ships_the_calibrated_reference(tmp_path: Path) -> None:
    """export.monitor_reference -> write_bundle -> load_bundle -> Monitor.from_bundle, thresholds reused."""
    from lineguard import export as ex
    from lineguard.edge import Predictor, load_bundle
    from lineguard.export.bundle import monitor_reference
    from lineguard.preprocess import preprocess_batch
    from lineguard.synth import draw_cone

    old = make_toy_bundle(tmp_path / "old")  # a bundle exported before monitoring: still loads
    b_old = load_bundle(old)
    with pytest.raises(MonitorError, match="re-export"):
        Monitor.from_bundle(b_old)
    pred = Predictor(b_old)
    images = [draw_cone(np.random.default_rng(i), "vanilla_sprinkles", "good", size=64) for i in range(60)]
    emb = pred.outputs(preprocess_batch(images, b_old.preprocess))["embedding"]
    block, arrays = monitor_reference(images, ["vanilla"] * 60, emb, np.linspace(0, 1, 20),
                                      np.array([0, 1] * 10), 0.3, arl0=1000.0, params=b_old.preprocess)
    meta = b_old.meta
    ref_block = {**meta["reference"], "monitor": block}
    ref_arrays = {**b_old.load_arrays("reference.npz"), **arrays}
    g = b_old.load_arrays("golden.npz")
    golden = ex.GoldenBatch(g["images"], g["recipes"], g["labels"], "")
    expected = {k[len("expected_"):]: v for k, v in g.items() if k.startswith("expected_")}
    parity = ex.compare_outputs(expected, expected, 0.5, 1.0, 1, 1e-4, "onnxruntime")
    new = ex.write_bundle(tmp_path / "new", b_old.model_path, classes=list(b_old.classes), positive_class="bad",
                          preprocess=b_old.preprocess, golden=golden, expected=expected, parity=parity,
                          decision=b_old.decision, recipes=b_old.recipes, precision="fp32", opset=18,
                          reference=ref_block, reference_arrays=ref_arrays, name="toy", version="2")
    bundle = load_bundle(new)
    assert bundle.meta["reference"]["monitor"]["calibrated_arl0"] == 1000.0
    ref = load_reference(bundle)
    assert ref.pca is not None and ref.pca.dim == 3 and ref.prior == pytest.approx(0.3)
    mon = Monitor.from_bundle(bundle, arl0=1000.0)
    assert np.array_equal(mon.h, ref.calibration["h"])  # the shipped thresholds, not recalibrated
    assert mon.bundle_version == "toy:2"
    assert Monitor.from_bundle(bundle, arl0=2000.0).h[0] > mon.h[0]  # another promise: calibrated anew


def test_the_monitors_in_place_detectors_equal_the_pure_step(reference: Reference) -> None:
    """Monitor._cusum (the hot path) and drift.cusum_step fire on the same frames with the same start."""
    from lineguard.monitor import CusumState, cusum_step

    mon = Monitor(reference, arl0=200)  # a low ARL so that it fires often
    rng = np.random.default_rng(9)
    state = CusumState.zeros(len(reference.names))
    for i in range(3000):
        x, e = _frame(rng, "vanilla", shift=0.8 if i % 700 > 500 else 0.0)
        fired = mon.update(x, e, None, "vanilla")
        z = reference.standardise(np.append(x, reference.pca.signals(e)[0]) if reference.pca else x,
                                  reference.row("vanilla"))
        state, up, down = cusum_step(state, np.nan_to_num(z), mon.k, mon.h)
        assert {a.signal for a in fired} == {reference.names[j] for j in np.flatnonzero(up | down)}
        for a in fired:
            j = reference.names.index(a.signal)
            assert a.since == int(state.upper_since[j] if a.direction == "up" else state.lower_since[j])
    assert mon.alarm_count > 5
    assert np.allclose(mon.cusum_state.upper, state.upper) and np.allclose(mon.cusum_state.lower, state.lower)


@pytest.mark.parametrize("batch", [7, 64])
def test_a_batched_monitor_raises_the_per_frame_alarms(reference: Reference, batch: int) -> None:
    """batch > 1 (the closed-form CUSUM over queued frames): the same alarms, frames and starts as
    drift.cusum_step frame by frame, returned at the latest by the update that completes the batch."""
    from lineguard.monitor import CusumState, cusum_step

    mon = Monitor(reference, arl0=200, batch=batch)
    rng = np.random.default_rng(9)
    state = CusumState.zeros(len(reference.names))
    expected: list[tuple[int, str, str, int]] = []
    got: list[tuple[int, str, str, int]] = []
    for i in range(3000):
        recipe = "vanilla" if (i // 450) % 2 == 0 else "chocolate"  # recipe changes inside batches too
        x, e = _frame(rng, recipe, shift=0.8 if i % 700 > 500 else 0.0)
        if i % 997 == 0:
            x[3] = np.nan  # a missing signal never fires
        delivered = mon.update(x, e if i % 301 else None, None, recipe)
        assert all(i - batch < a.frame <= i for a in delivered)
        got += [(a.frame, a.signal, a.direction, a.since) for a in delivered]
        z = reference.standardise(np.append(x, reference.pca.signals(e)[0] if i % 301 else [np.nan, np.nan]),
                                  reference.row(recipe))
        state, up, down = cusum_step(state, np.nan_to_num(z), mon.k, mon.h)
        for j in np.flatnonzero(up | down):
            side_up = bool(up[j])
            expected.append((i, reference.names[j], "up" if side_up else "down",
                             int(state.upper_since[j] if side_up else state.lower_since[j])))
    got += [(a.frame, a.signal, a.direction, a.since) for a in mon.flush()]  # the frames still queued
    assert len(expected) > 5 and sorted(got) == sorted(expected)
    assert mon.status()["frames"] == 3000
    assert np.allclose(mon.cusum_state.upper, state.upper) and np.allclose(mon.cusum_state.lower, state.lower)


@pytest.mark.parametrize("batch", [1, 16])
def test_a_batch_of_frames_fed_at_once_equals_each_frame_fed_alone(reference: Reference, batch: int) -> None:
    """update_many (the station's inference batch in one call) leaves the monitor as N update calls would:
    the same alarms, CUSUM state, KPIs and estimate, with chunks that straddle the monitor's batch."""
    one, many = Monitor(reference, arl0=200, batch=batch), Monitor(reference, arl0=200, batch=batch)
    rng = np.random.default_rng(3)
    got_one: list[tuple[int, str, str, int]] = []
    got_many: list[tuple[int, str, str, int]] = []
    frame, chunk_no = 0, 0
    while frame < 1500:
        size = int(rng.integers(1, 21))
        recipe = "vanilla" if chunk_no % 5 < 3 else "chocolate"
        with_embedding = chunk_no % 7 != 3
        xs, es = zip(*[_frame(rng, recipe, shift=0.9 if (frame + j) % 600 > 420 else 0.0) for j in range(size)],
                     strict=True)
        stats, emb = np.array(xs), np.array(es)
        scores = rng.random(size)
        times = [1.8e9 + 7.0 * (frame + j) for j in range(size)]
        rejected = None if chunk_no % 2 else list(scores > 0.7)
        for j in range(size):
            got_one += [(a.frame, a.signal, a.direction, a.since) for a in one.update(
                stats[j], emb[j] if with_embedding else None, float(scores[j]), recipe, time=times[j],
                rejected=None if rejected is None else bool(rejected[j]))]
        got_many += [(a.frame, a.signal, a.direction, a.since) for a in many.update_many(
            stats, emb if with_embedding else None, scores, recipe, times=times, rejected=rejected)]
        frame += size
        chunk_no += 1
    got_one += [(a.frame, a.signal, a.direction, a.since) for a in one.flush()]
    got_many += [(a.frame, a.signal, a.direction, a.since) for a in many.flush()]
    assert len(got_one) > 5 and got_many == got_one
    assert many.status() == one.status()
    assert np.array_equal(many.cusum_state.upper, one.cusum_state.upper)
    assert np.array_equal(many.cusum_state.lower, one.cusum_state.lower)
    assert many.kpis() == one.kpis() and many.estimate().balanced_accuracy == one.estimate().balanced_accuracy
    with pytest.raises(MonitorError, match="one scores entry per frame"):
        many.update_many(stats, None, scores[:-1], "vanilla")
