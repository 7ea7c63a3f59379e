"""Image signals move the way a line's faults move them, and the monitor needs no training stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lineguard.monitor import IMAGE_SIGNALS, MonitorError, frame_signals, signal_vector
from lineguard.monitor.signals import SignalError, vector_from_stats
from lineguard.synth import apply_drift, draw_cone
from tests.unit.test_edge_imports import BLOCKED


@pytest.fixture(scope="module")
def cones() -> list[np.ndarray]:
    return [draw_cone(np.random.default_rng(i), "vanilla_sprinkles", "good", size=128) for i in range(6)]


def _mean_signals(images: list[np.ndarray]) -> dict[str, float]:
    v = np.mean([signal_vector(im) for im in images], axis=0)
    return dict(zip(IMAGE_SIGNALS, v, strict=True))


@pytest.mark.parametrize(("kind", "signal", "direction"), [
    ("blur", "sharpness", -1), ("dirty-lens", "sharpness", -1), ("dirty-lens", "haze", +1),
    ("dirty-lens", "contrast", -1), ("lighting", "brightness", -1), ("color-cast", "colour_balance", +1),
])
def test_a_fault_moves_its_signal(cones: list[np.ndarray], kind: str, signal: str, direction: int) -> None:
    clean = _mean_signals(cones)
    drifted = _mean_signals([apply_drift(im, kind, 0.5, np.random.default_rng(i)) for i, im in enumerate(cones)])
    change = (drifted[signal] - clean[signal]) / max(abs(clean[signal]), 1e-9)
    assert direction * change > 0.1, (kind, signal, clean[signal], drifted[signal])


def test_known_values_on_flat_and_clipped_images() -> None:
    grey = np.full((64, 64, 3), 128, np.uint8)
    s = frame_signals(grey)
    assert s["brightness"] == pytest.approx(128, abs=0.01)
    # float32 moments: a flat frame's spread reads within a hundredth of a grey level of zero
    assert s["contrast"] == pytest.approx(0, abs=0.01) and s["sharpness"] == pytest.approx(0, abs=1e-6)
    assert s["saturation"] == 0 and s["colourfulness"] == pytest.approx(0, abs=1e-6)
    white = frame_signals(np.full((64, 64, 3), 255, np.uint8))
    black = frame_signals(np.zeros((64, 64, 3), np.uint8))
    assert white["overexposed"] == 1.0 and white["underexposed"] == 0.0 and white["haze"] == pytest.approx(1.0)
    assert black["underexposed"] == 1.0 and black["haze"] == 0.0
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 200
    r = frame_signals(red)
    # saturation is (max - min) / (max + 1): HSV's, damped on near-black pixels
    assert r["saturation"] == pytest.approx(200 / 201, abs=1e-6) and r["colour_balance"] == pytest.approx(200 / 255, abs=1e-5)
    assert r["colourfulness"] > 50


def test_any_frame_size_gives_all_signals() -> None:
    rng = np.random.default_rng(0)
    for shape in [(3, 3, 3), (31, 200, 3), (480, 640, 3)]:
        v = signal_vector(rng.integers(0, 256, shape, dtype=np.uint8))
        assert v.shape == (len(IMAGE_SIGNALS),) and np.all(np.isfinite(v))


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32),
                                 np.zeros((2, 8, 3), np.uint8), [[1, 2, 3]]])
def test_bad_images_are_named(bad: object) -> None:
    with pytest.raises(SignalError, match=r"HxWx3 uint8|at least 3x3"):
        signal_vector(bad)  # type: ignore[arg-type]
    assert issubclass(SignalError, Exception) and MonitorError is not SignalError


def test_stats_round_trip_and_missing_is_nan() -> None:
    s = frame_signals(np.full((8, 8, 3), 10, np.uint8))
    assert np.allclose(vector_from_stats(s), [s[k] for k in IMAGE_SIGNALS])
    assert np.isnan(vector_from_stats({"brightness": 1.0})[1:]).all()


def test_the_reference_and_the_edge_compute_the_same_signals_of_an_image(tmp_path: Path) -> None:
    """One contract: export's reference of an image equals what the edge computes from its predictor's input."""
    from lineguard.edge import Predictor
    from lineguard.monitor import Monitor, Reference, reference_from_images
    from lineguard.monitor.signals import ImageSignals
    from tests.unit._edge_bundles import make_toy_bundle

    predictor = Predictor(make_toy_bundle(tmp_path / "toy"))
    params = predictor.params
    images = [draw_cone(np.random.default_rng(i), "vanilla_sprinkles", "good", size=96) for i in range(40)]
    reference = reference_from_images(images, None, None, params)
    _, out = predictor.predict_outputs(images)
    monitor = Monitor(Reference.from_arrays(reference.to_arrays()), arl0=1000)  # as a bundle ships it
    assert monitor.signals.params == params
    edge = np.stack([monitor.signals.of_input(x) for x in out["input"]])
    assert np.array_equal(edge, reference.values)
    # the station computes a whole batch at once: the same numbers, to float rounding
    np.testing.assert_allclose(monitor.signals.of_inputs(out["input"]), reference.values, rtol=1e-6, atol=1e-9)
    assert np.array_equal(edge[0], signal_vector(images[0], params))
    with pytest.raises(SignalError, match="model input of shape"):
        ImageSignals(params).of_input(out["input"][0][:, :16])


@pytest.mark.parametrize("color", ["rgb", "grey"])
@pytest.mark.parametrize("frames", [1, 16])
def test_a_batch_gives_every_input_its_own_signals(color: str, frames: int) -> None:
    """The station's batched signals (of_inputs) equal each input's alone (of_input, what export's reference
    uses), on inputs of odd sizes, from black to blown out, for a grey and an RGB model."""
    from lineguard.monitor.signals import ImageSignals
    from lineguard.preprocess import PreprocessParams, preprocess_batch

    rng = np.random.default_rng(frames)
    grey = color == "grey"
    # stretched (no letterbox padding): the brightest frame's clipped pixels are its own
    params = PreprocessParams(size=(37, 53), resize="stretch", color="grey", mean=(0.45,), std=(0.226,)) if grey \
        else PreprocessParams(size=(61, 45), resize="stretch")
    # Frames of every brightness (the clip counts see black and blown-out pixels), at odd camera sizes.
    levels = [255.0 * i / max(frames - 1, 1) for i in range(frames)]
    images = [np.clip(rng.normal(level, 40, (71 + 2 * i, 93, 1)) + rng.normal(0, 8, (71 + 2 * i, 93, 3)), 0, 255
                      ).astype(np.uint8) for i, level in enumerate(levels)]
    batch = preprocess_batch(images, params)
    signals = ImageSignals(params)
    together = signals.of_inputs(batch)
    alone = np.stack([signals.of_input(x) for x in batch])
    assert together.shape == (frames, len(IMAGE_SIGNALS)) and np.isfinite(together).all()
    np.testing.assert_allclose(together, alone, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(alone[0], signal_vector(images[0], params), rtol=1e-6, atol=1e-9)
    if frames > 1:  # the frames differ, so a batch that mixed them up could not pass
        assert np.ptp(together[:, IMAGE_SIGNALS.index("brightness")]) > 100
        over, under = IMAGE_SIGNALS.index("overexposed"), IMAGE_SIGNALS.index("underexposed")
        assert together[-1, over] > 0.02 and together[0, under] > 0.02
    # A batch of one again (buffers kept per batch size): the same numbers.
    np.testing.assert_allclose(signals.of_inputs(batch[-1:])[0], together[-1], rtol=1e-6, atol=1e-9)


def test_a_bad_batch_of_inputs_is_named() -> None:
    from lineguard.monitor.signals import ImageSignals
    from lineguard.preprocess import PreprocessParams

    signals = ImageSignals(PreprocessParams(size=(16, 16)))
    for bad in [np.zeros((0, 3, 16, 16), np.float32), np.zeros((2, 3, 16, 8), np.float32),
                np.zeros((2, 3, 16, 16), np.float64), np.zeros((3, 16, 16), np.float32)]:
        with pytest.raises(SignalError, match=r"batch of model inputs of shape \(N, 3, 16, 16\), N >= 1"):
            signals.of_inputs(bad)
    with pytest.raises(SignalError, match="no preprocessing given"):
        ImageSignals(None).of_inputs(np.zeros((1, 3, 16, 16), np.float32))


def test_the_signals_of_the_model_input_do_not_depend_on_the_cameras_resolution() -> None:
    """A camera of three times the training images' resolution: the frame's own pixels look blurred, the
    model input does not (what the reference of a bundle compares with)."""
    from PIL import Image

    from lineguard.preprocess import PreprocessParams

    params = PreprocessParams(size=(64, 64))
    sharp = IMAGE_SIGNALS.index("sharpness")
    for i in range(3):
        image = draw_cone(np.random.default_rng(i), "vanilla_sprinkles", "good", size=128)
        big = np.asarray(Image.fromarray(image).resize((384, 384), Image.Resampling.BILINEAR))
        small, large = signal_vector(image, params), signal_vector(big, params)
        assert 0.8 < large[sharp] / small[sharp] < 1.2
        assert abs(large[0] - small[0]) < 1.0 and abs(large[1] - small[1]) < 1.0  # brightness, contrast
        assert signal_vector(big)[sharp] < 0.3 * signal_vector(image)[sharp]  # frame pixels: not comparable


def test_a_grey_models_input_has_no_colour() -> None:
    from lineguard.preprocess import PreprocessParams, preprocess

    params = PreprocessParams(size=(48, 48), color="grey", mean=(0.45,), std=(0.226,))
    image = draw_cone(np.random.default_rng(0), "strawberry_drizzle", "good", size=96)
    s = dict(zip(IMAGE_SIGNALS, signal_vector(image, params), strict=True))
    assert s["colourfulness"] == pytest.approx(0, abs=0.05) and s["saturation"] == pytest.approx(0, abs=1e-6)
    assert s["colour_balance"] == pytest.approx(0, abs=1e-6)
    grey_pixels = preprocess(image, params)[0] * (255 * 0.226) + 255 * 0.45
    assert s["brightness"] == pytest.approx(float(grey_pixels.mean()), abs=3.0)  # a sample of the pixels
    assert s["sharpness"] > 0


MONITOR_SCRIPT = r"""
import importlib.abc, json, sys
BLOCKED = {blocked!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{{name}} is blocked in this test: the monitor must not need it")
        return None
sys.meta_path.insert(0, Blocker())
import numpy as np
import lineguard.monitor as m
rng = np.random.default_rng(0)
ref = m.build_reference(rng.normal(size=(200, len(m.IMAGE_SIGNALS))) + 5, ["a"] * 100 + ["b"] * 100,
                        rng.normal(size=(200, 6)), val_scores=rng.random(50), val_labels=rng.integers(0, 2, 50))
mon = m.Monitor(ref, arl0=1000)
for i in range(300):
    mon.update(ref.values[i % 200, :len(m.IMAGE_SIGNALS)], rng.normal(size=6), float(rng.random()), "a", time=1e9 + i)
est = mon.estimate(); rep = mon.report(permutations=20); kp = mon.kpis()
loaded = sorted(x for x in sys.modules if any(x == b or x.startswith(b + ".") for b in BLOCKED))
print(json.dumps({{"frames": mon.status()["frames"], "loaded": loaded, "n": est.n, "kpi_rows": len(kp)}}))
"""


def test_monitor_runs_with_the_training_stack_blocked() -> None:
    """The edge import boundary (tests/unit/test_edge_imports.py) holds for lineguard.monitor too."""
    code = MONITOR_SCRIPT.format(blocked=(*BLOCKED, "lineguard.edge.bundle", "onnxruntime"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"frames": 300, "loaded": [], "n": 300, "kpi_rows": 1}
