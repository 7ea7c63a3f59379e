"""Static INT8 (QDQ) with ONNX Runtime, calibrated on training images preprocessed by the shared contract.

Never dynamic INT8: it measured 5-13x slower than fp32 for CNNs here. Whether the INT8
model is chosen is decided by measurement (:func:`lineguard.compress.select_candidate`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lineguard.compress.select import CompressError
from lineguard.edge.runner import INPUT_NAME

if TYPE_CHECKING:
    from lineguard.manifest import Dataset
    from lineguard.preprocess import PreprocessParams

CalibrationMethodName = Literal["minmax", "entropy", "percentile"]


def calibration_batch(dataset: Dataset, params: PreprocessParams, n: int, seed: int = 0) -> np.ndarray:
    """``n`` training images (a seeded sample, all classes and recipes mixed) preprocessed with the
    shared contract, as Nx3xHxW float32: what INT8 calibration sees must be what the edge feeds."""
    from lineguard.preprocess import preprocess_batch

    rows = dataset.split("train")
    if rows.empty:
        raise CompressError(f"dataset '{dataset.root}' has no train images to calibrate INT8 with")
    rows = rows.sort_values("image_id").reset_index(drop=True)
    take = np.random.default_rng(seed).permutation(len(rows))[: min(n, len(rows))]
    return preprocess_batch(dataset.read_images(rows.iloc[np.sort(take)]), params)


def _calibration_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if name not in methods:
        raise CompressError(f"compress.calibration_method must be one of {', '.join(methods)}, got '{name}'")
    return methods[name]


def quantize_int8(
    fp32_onnx: str | Path,
    out: str | Path,
    calibration: np.ndarray,
    method: CalibrationMethodName = "minmax",
    per_channel: bool = True,
    activation_type: Literal["uint8", "int8"] = "uint8",
) -> Path:
    """Static INT8 quantisation (QDQ, per-channel int8 weights) with ONNX Runtime.

    Activations are uint8 by default (U8S8): on x86 CPUs without VNNI, int8 activations (S8S8)
    measured 3.5x slower than U8S8 for MobileNetV3-small here, while U8S8 was on par with fp32.

    ``quant_pre_process`` (shape inference and graph optimisation) runs first, as ONNX Runtime
    recommends; activations are calibrated on ``calibration`` (Nx3xHxW float32, preprocessed
    training images) with ``method``. Writes ``out`` atomically and returns it.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration.ndim != 4 or calibration.dtype != np.float32 or len(calibration) == 0:
        raise CompressError(
            f"calibration data must be a non-empty Nx3xHxW float32 array, got {calibration.shape}"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    calibrate_method = _calibration_method(method)

    class _Reader(CalibrationDataReader):  # one image per call: the calibrator sees batch-1 inputs
        def __init__(self) -> None:
            self._items = iter(range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self._items, None)
            return None if i is None else {INPUT_NAME: calibration[i : i + 1]}

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_onnx), str(pre))
        staged = Path(tmp) / "int8.onnx"
        extra = {"CalibMaxIntermediateOutputs": 64} if method != "minmax" else {}
        quantize_static(
            str(pre),
            str(staged),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calibrate_method,
            extra_options=extra,
        )
        os.replace(staged, out)
    return out
