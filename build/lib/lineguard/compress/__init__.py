"""Compression: make the float model fit an edge budget, measure every variant, pick one honestly.

Candidates built from one tracked run:

- ``fp32``: the float model exported to ONNX (the reference every other candidate is compared with);
- ``int8-qdq``: static INT8 with ONNX Runtime (QDQ format, per-channel weights, calibrated on
  preprocessed training images). Never dynamic INT8: it is 5-13x slower than fp32 for CNNs here;
- ``fp32-prunedNN``: structured channel pruning (torch-pruning) at each configured ratio, then
  fine-tuned through the training loop so accuracy recovers;
- ``fp32-distilled``: a smaller student trained with the run as its teacher (knowledge distillation);
- ``fp32-openvino``: the fp32 ONNX model run by OpenVINO with an explicit f32 precision hint
  (OpenVINO's default can be bf16 on CPUs that have it, which changes the scores).

Each candidate is measured the same way: file size, MACs, latency (median and p99 at 1 and 2
threads, in fresh subprocesses, interleaved in rounds so machine noise hits all alike), balanced
accuracy and ECE on the test split, and agreement with the float model on the golden batch.
:func:`select_candidate` is the pure rule that picks one: the most accurate candidate within the
latency budget and the allowed accuracy drop, INT8 only where it measures faster than fp32.
"""

from lineguard.compress.int8 import calibration_batch, quantize_int8
from lineguard.compress.latency import (
    latency_stats,
    measure_latency,
    openvino_available,
    openvino_precision,
    predict_logits,
    runner,
)
from lineguard.compress.prune import count_macs, finetune, prune
from lineguard.compress.run import CompressResult, compress
from lineguard.compress.select import (
    REFERENCE,
    Candidate,
    CompressError,
    LatencyStats,
    Selection,
    comparison_table,
    select_candidate,
)

__all__ = [
    "REFERENCE",
    "Candidate",
    "CompressError",
    "CompressResult",
    "LatencyStats",
    "Selection",
    "calibration_batch",
    "comparison_table",
    "compress",
    "count_macs",
    "finetune",
    "latency_stats",
    "measure_latency",
    "openvino_available",
    "openvino_precision",
    "predict_logits",
    "prune",
    "quantize_int8",
    "runner",
    "select_candidate",
]
