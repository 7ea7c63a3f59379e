"""Every conversion in compress has a parity test on a fixed golden batch with stated tolerances:
fp32 ONNX -> static INT8 (QDQ), torch -> pruned torch -> ONNX, ONNX Runtime -> OpenVINO (f32 hint).

A tiny TinyCNN is trained for a few seconds on the shared disc dataset so its logits carry signal
(an untrained network's near-constant scores would make decision parity meaningless).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lineguard import compress  # noqa: E402
from lineguard.compress import CompressError  # noqa: E402
from lineguard.export import GoldenBatch, export_onnx, golden_batch  # noqa: E402
from lineguard.models import create_model  # noqa: E402
from lineguard.preprocess import PreprocessParams, preprocess_batch  # noqa: E402

SIZE = (48, 48)
# Stated tolerances, INT8 vs fp32 on the golden batch (probabilities of 'bad'): the mean and the
# 90th percentile of |score difference|, and the share of equal decisions at 0.5. No bound on the
# single worst image: with 32 calibration images one borderline item may move by ~0.3.
INT8_MEAN_SCORE_DIFF = 0.03
INT8_P90_SCORE_DIFF = 0.05
INT8_MIN_AGREEMENT = 0.9
# OpenVINO (f32 hint) vs ONNX Runtime fp32: the same float model, only kernels differ.
OPENVINO_MAX_LOGIT_DIFF = 1e-3


@dataclass
class Tiny:
    model: torch.nn.Module
    params: PreprocessParams
    golden: GoldenBatch
    calibration: np.ndarray
    fp32: Path


def _train_tiny(dataset, params: PreprocessParams) -> torch.nn.Module:
    """A few seconds of plain Adam so the model separates the classes (test fixture only).

    One torch thread: on a busy 2-core machine more threads make this loop 5x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("tinycnn", num_classes=2, width=0.25)
    rows = dataset.split("train")
    x = torch.from_numpy(preprocess_batch(dataset.read_images(rows), params))
    y = torch.tensor([1 if lbl == "bad" else 0 for lbl in rows["label"]])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(20):
        for i in range(0, len(x), 16):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i : i + 16]), y[i : i + 16]).backward()
            opt.step()
    torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    from tests.conftest import make_simple_dataset

    root = tmp_path_factory.mktemp("compress")
    dataset = make_simple_dataset(root / "ds", per_class=20, recipes=2, size=48)
    params = PreprocessParams(size=SIZE)
    model = _train_tiny(dataset, params)
    golden = golden_batch(dataset, params, 32)
    exported = export_onnx(model, params, root / "fp32.onnx", golden=golden)
    calibration = compress.calibration_batch(dataset, params, 32)
    return Tiny(model, params, golden, calibration, exported.path)


def _scores(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e[:, 1] / e.sum(axis=1))


def test_calibration_batch_is_preprocessed_training_images(tiny: Tiny) -> None:
    assert tiny.calibration.shape == (32, 3, *SIZE)
    assert tiny.calibration.dtype == np.float32
    # normalised pixels, not raw 0..255 values
    assert -5 < tiny.calibration.min() < 0 < tiny.calibration.max() < 5


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_int8_matches_fp32_on_the_golden_batch(tiny: Tiny, tmp_path: Path, method: str) -> None:
    int8 = compress.quantize_int8(tiny.fp32, tmp_path / "int8.onnx", tiny.calibration, method=method)  # type: ignore[arg-type]
    import onnx

    graph = onnx.load(str(int8)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    assert "DynamicQuantizeLinear" not in ops  # never dynamic INT8
    x = tiny.golden.inputs(tiny.params)
    ref = compress.predict_logits(tiny.fp32, "ort", x)
    got = compress.predict_logits(int8, "ort", x)
    s_ref, s_got = _scores(ref), _scores(got)
    diff = np.abs(s_ref - s_got)
    assert diff.mean() <= INT8_MEAN_SCORE_DIFF
    assert np.percentile(diff, 90) <= INT8_P90_SCORE_DIFF
    assert np.mean((s_ref >= 0.5) == (s_got >= 0.5)) >= INT8_MIN_AGREEMENT
    assert int8.stat().st_size < tiny.fp32.stat().st_size


@pytest.mark.parametrize(("activation_type", "dtype"), [("uint8", np.uint8), ("int8", np.int8)])
def test_int8_per_channel_weights_and_activation_type(
    tiny: Tiny, tmp_path: Path, activation_type: str, dtype: type
) -> None:
    import onnx
    from onnx import numpy_helper

    int8 = compress.quantize_int8(
        tiny.fp32,
        tmp_path / "int8.onnx",
        tiny.calibration,
        activation_type=activation_type,  # type: ignore[arg-type]
    )
    model = onnx.load(str(int8))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    # a per-channel weight DequantizeLinear has a vector of scales (one per output channel)
    dq_scales = [
        inits[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits
    ]
    assert any(s.ndim == 1 and s.size > 1 for s in dq_scales)
    # activations: the zero points of the QuantizeLinear nodes (weights are stored already quantised)
    q_zero_points = [
        inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2
    ]
    assert q_zero_points and all(z.dtype == dtype for z in q_zero_points)


def test_int8_refuses_bad_calibration_data(tiny: Tiny, tmp_path: Path) -> None:
    with pytest.raises(CompressError, match="calibration data"):
        compress.quantize_int8(tiny.fp32, tmp_path / "x.onnx", np.zeros((0, 3, *SIZE), np.float32))
    with pytest.raises(CompressError, match="calibration_method"):
        compress.quantize_int8(tiny.fp32, tmp_path / "x.onnx", tiny.calibration, method="dynamic")  # type: ignore[arg-type]


def test_pruning_reduces_params_and_exports_with_parity(tiny: Tiny, tmp_path: Path) -> None:
    macs0, params0 = compress.count_macs(tiny.model, SIZE)
    pruned = compress.prune(tiny.model, 0.5, SIZE)
    macs1, params1 = compress.count_macs(pruned, SIZE)
    assert params1 < 0.6 * params0 and macs1 < macs0
    assert compress.count_macs(tiny.model, SIZE) == (macs0, params0)  # the input model is untouched
    x = torch.from_numpy(tiny.golden.inputs(tiny.params))
    with torch.no_grad():
        assert pruned(x).shape == (len(x), 2)  # the classes survive
    # export_onnx raises unless ONNX Runtime matches the pruned torch model within 1e-4 on every logit
    exported = export_onnx(pruned, tiny.params, tmp_path / "pruned.onnx", golden=tiny.golden)
    assert exported.parity.max_abs_logit_diff <= 1e-4
    assert exported.path.stat().st_size < tiny.fp32.stat().st_size


def test_pruning_refuses_bad_ratio(tiny: Tiny) -> None:
    with pytest.raises(CompressError, match="between 0 and 1"):
        compress.prune(tiny.model, 1.0, SIZE)


def test_openvino_f32_matches_onnxruntime(tiny: Tiny) -> None:
    pytest.importorskip("openvino")
    x = tiny.golden.inputs(tiny.params)
    ref = compress.predict_logits(tiny.fp32, "ort", x)
    got = compress.predict_logits(tiny.fp32, "openvino", x)
    assert np.abs(ref - got).max() <= OPENVINO_MAX_LOGIT_DIFF
    assert np.array_equal(_scores(ref) >= 0.5, _scores(got) >= 0.5)
    assert compress.openvino_precision(tiny.fp32) == "f32"


def test_latency_is_measured_in_interleaved_subprocesses(tiny: Tiny) -> None:
    sample = tiny.golden.inputs(tiny.params)[:1]
    stats = compress.measure_latency(
        {"a": (tiny.fp32, "ort"), "b": (tiny.fp32, "ort")},
        sample,
        threads=(1,),
        warmup=2,
        repeats=12,
        rounds=3,
    )
    assert set(stats) == {"a", "b"}
    for per_thread in stats.values():
        s = per_thread[1]
        assert s.runs == 12 and 0 < s.median_ms <= s.p99_ms


def test_latency_failure_names_the_model(tiny: Tiny, tmp_path: Path) -> None:
    bad = tmp_path / "not-a-model.onnx"
    bad.write_bytes(b"nope")
    sample = tiny.golden.inputs(tiny.params)[:1]
    with pytest.raises(CompressError, match=r"not-a-model\.onnx"):
        compress.measure_latency({"bad": (bad, "ort")}, sample, threads=(1,), warmup=0, repeats=10, rounds=1)
