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

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lineguard import LineguardError

if TYPE_CHECKING:
    import torch

    from lineguard.config import LineguardConfig
    from lineguard.manifest import Dataset
    from lineguard.preprocess import PreprocessParams

Backend = Literal["ort", "openvino"]  # the edge Predictor's backend names
OPENVINO_PRECISION = "f32"
CalibrationMethodName = Literal["minmax", "entropy", "percentile"]
REFERENCE = "fp32"
INPUT_NAME = "image"


class CompressError(LineguardError):
    """Compression cannot go on: a bad option, a missing backend, or no candidate fits the budget."""


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one candidate at one thread count (batch 1), over all rounds."""

    threads: int
    median_ms: float
    p99_ms: float
    runs: int


@dataclass(frozen=True)
class Candidate:
    """One measured variant of the model. ``precision`` is the label written into the bundle."""

    name: str
    precision: str
    backend: Backend
    model_path: str
    size_bytes: int
    macs: int | None = None
    params: int | None = None
    latency: Mapping[int, LatencyStats] = field(default_factory=dict)
    balanced_accuracy: float = float("nan")
    ece: float = float("nan")
    agreement: float = float("nan")  # fraction of golden-batch decisions equal to the float model's
    max_score_diff: float = float("nan")  # max |P(positive) - float P(positive)| on the golden batch
    selectable: bool = True  # False: measured for comparison, not deployable by this configuration
    note: str = ""

    def latency_ms(self, threads: int) -> float:
        """Median latency at ``threads``; +inf when it was not measured (never fits a budget)."""
        stats = self.latency.get(threads)
        return stats.median_ms if stats else math.inf

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["latency"] = {str(k): asdict(v) for k, v in self.latency.items()}
        return d


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select_candidate`: the choice (or None) and why each one was or was not."""

    chosen: Candidate | None
    reasons: dict[str, str]
    budget_ms: float
    max_drop: float
    threads: int
    fallback: bool = (
        False  # True: nothing fitted and the fp32 reference was taken anyway (compress.on_no_fit)
    )

    def explain(self) -> str:
        lines = [
            f"budget {self.budget_ms:g} ms at {self.threads} thread(s), max drop {self.max_drop * 100:.2f} points"
        ]
        lines += [f"  {name}: {why}" for name, why in self.reasons.items()]
        return "\n".join(lines)


# --- selection (pure) -----------------------------------------------------------------------------


def _is_int8(candidate: Candidate) -> bool:
    return "int8" in candidate.precision


def select_candidate(
    candidates: Sequence[Candidate], budget_ms: float, max_drop: float, threads: int = 1
) -> Selection:
    """Pick the most accurate candidate whose median latency fits ``budget_ms`` and whose balanced
    accuracy is at most ``max_drop`` (a fraction: 0.003 = 0.3 points) below the float reference.

    Rules, in order, each giving the reason a candidate is skipped:
    not selectable (e.g. a backend the deployment does not use); over the latency budget; accuracy
    drop too large; INT8 that is not measured faster than fp32 at the same thread count (on x86
    INT8 is often slower for MobileNetV3, and then it only costs accuracy). Ties on accuracy go to
    the faster, then the smaller candidate. Returns ``chosen=None`` when nothing fits; the
    caller decides how to say so (``compress`` raises :class:`CompressError`, or bundles fp32 and says so
    when ``compress.on_no_fit`` is ``fp32``).
    """
    by_name = {c.name: c for c in candidates}
    if REFERENCE not in by_name:
        raise CompressError(f"the candidates must include the float reference '{REFERENCE}'")
    reference = by_name[REFERENCE]
    ref_latency = reference.latency_ms(threads)
    reasons: dict[str, str] = {}
    eligible: list[Candidate] = []
    for c in candidates:
        latency = c.latency_ms(threads)
        drop = reference.balanced_accuracy - c.balanced_accuracy
        if not c.selectable:
            reasons[c.name] = f"skipped: not selectable ({c.note or 'comparison only'})"
        elif math.isnan(c.balanced_accuracy):
            reasons[c.name] = "skipped: accuracy not measured"
        elif latency > budget_ms:
            shown = "not measured" if math.isinf(latency) else f"{latency:.3f} ms"
            reasons[c.name] = f"skipped: over budget ({shown} > {budget_ms:g} ms)"
        elif drop > max_drop + 1e-12:
            reasons[c.name] = (
                f"skipped: balanced-accuracy drop {drop * 100:.2f} points > {max_drop * 100:.2f} allowed"
            )
        elif _is_int8(c) and not latency < ref_latency:
            reasons[c.name] = f"skipped: INT8 not faster than fp32 ({latency:.3f} ms vs {ref_latency:.3f} ms)"
        else:
            eligible.append(c)
            reasons[c.name] = (
                f"eligible: {latency:.3f} ms, balanced accuracy {c.balanced_accuracy * 100:.2f} %"
            )
    chosen = None
    if eligible:
        chosen = min(eligible, key=lambda c: (-c.balanced_accuracy, c.latency_ms(threads), c.size_bytes))
        reasons[chosen.name] = "chosen: " + reasons[chosen.name].removeprefix("eligible: ")
    return Selection(chosen=chosen, reasons=reasons, budget_ms=budget_ms, max_drop=max_drop, threads=threads)


def comparison_table(candidates: Sequence[Candidate], selection: Selection | None = None) -> str:
    """The candidate table as Markdown: size, MACs, latency per thread count, accuracy, parity."""
    threads = sorted({t for c in candidates for t in c.latency})
    head = ["candidate", "backend", "size (KB)", "MMACs", "params (k)"]
    for t in threads:
        head += [f"median ms @{t}t", f"p99 ms @{t}t"]
    head += ["bal. acc. (%)", "ECE", "golden agreement (%)", "max score diff", "decision"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def num(v: float | int | None, fmt: str) -> str:
        if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
            return "-"
        return format(v, fmt)

    for c in candidates:
        cells = [
            c.name,
            c.backend,
            num(c.size_bytes / 1024, ".1f"),
            num(None if c.macs is None else c.macs / 1e6, ".2f"),
            num(None if c.params is None else c.params / 1e3, ".1f"),
        ]
        for t in threads:
            s = c.latency.get(t)
            cells += [num(s.median_ms if s else None, ".3f"), num(s.p99_ms if s else None, ".3f")]
        cells += [
            num(c.balanced_accuracy * 100, ".2f"),
            num(c.ece, ".4f"),
            num(c.agreement * 100, ".2f"),
            num(c.max_score_diff, ".4f"),
            (selection.reasons.get(c.name, "") if selection else "").replace("|", "/"),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


# --- calibration and static INT8 -----------------------------------------------------------------


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


# --- structured pruning ---------------------------------------------------------------------------


def _in_channels(model: torch.nn.Module) -> int:
    from lineguard import models

    return models.input_channels(model)


def count_macs(model: torch.nn.Module, input_size: tuple[int, int]) -> tuple[int, int]:
    """(multiply-accumulates, parameters) of one batch-1 forward pass at ``input_size`` (h, w)."""
    import torch
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, _in_channels(model), *input_size))
    model.train(was_training)
    return int(macs), int(params)


def _classifier_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Layers whose output channels are the classes (or the exported embedding): never pruned."""
    import torch

    linears: list[torch.nn.Module] = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    convs: list[torch.nn.Module] = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # The last Linear (or last conv for all-conv heads) produces the logits.
    return linears[-1:] if linears else convs[-1:]


def prune(
    model: torch.nn.Module, ratio: float, input_size: tuple[int, int], round_to: int = 8
) -> torch.nn.Module:
    """A structurally pruned copy of ``model``: ``ratio`` of the channels of every prunable layer
    removed (L2-magnitude importance, grouped over coupled layers by torch-pruning's dependency
    graph, rounded to multiples of ``round_to`` for fast kernels). The classifier's outputs are kept.
    The copy needs fine-tuning to recover accuracy; the input model is not touched.
    """
    import copy

    import torch
    import torch_pruning as tp

    if not 0.0 < ratio < 1.0:
        raise CompressError(f"compress.prune_ratios values must be between 0 and 1 (exclusive), got {ratio}")
    pruned = copy.deepcopy(model).cpu().eval()
    example = torch.zeros(1, _in_channels(model), *input_size)
    pruner = tp.pruner.BasePruner(
        pruned,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=_classifier_layers(pruned),
        round_to=round_to,
    )
    pruner.step()
    return pruned


# --- backends ---------------------------------------------------------------------------------------


def runner(model_path: str | Path, backend: Backend, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """``batch (Nx3xHxW float32) -> logits`` for a model file, run exactly as the edge runs it.

    The edge's own runners are used (ONNX Runtime: ``threads`` intra-op threads, sequential,
    full graph optimisation; OpenVINO: CPU, latency hint, one stream and an explicit ``f32``
    precision hint, because its bf16 default on CPUs that support it moves logits by ~1 %), so a
    measured candidate is the model the edge would run.
    """
    from lineguard.edge.predictor import _OpenVinoRunner, _OrtRunner

    if backend == "openvino":
        return _OpenVinoRunner(Path(model_path), threads, OPENVINO_PRECISION).logits
    if backend != "ort":
        raise CompressError(f"unknown backend '{backend}'; expected ort or openvino")
    return _OrtRunner(Path(model_path), threads).logits


def openvino_precision(model_path: str | Path, hint: str | None = OPENVINO_PRECISION) -> str:
    """The inference precision OpenVINO compiles ``model_path`` with on this CPU: under ``hint``
    (what LineGuard runs), or OpenVINO's own default when ``hint`` is None (bf16 on CPUs with it)."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": hint} if hint else {}
    compiled = ov.Core().compile_model(str(model_path), "CPU", config)
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    return str(value.to_string() if hasattr(value, "to_string") else value)


def openvino_available() -> bool:
    """Whether the optional OpenVINO backend (``lineguard[openvino]``) can be imported."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def predict_logits(
    model_path: str | Path, backend: Backend, images: np.ndarray, threads: int = 2, batch_size: int = 1
) -> np.ndarray:
    """Logits of ``images`` (Nx3xHxW float32). Batch 1 by default: what the edge runs, and the
    shape INT8 activations were calibrated for."""
    run = runner(model_path, backend, threads)
    outs = [run(np.ascontiguousarray(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


# --- latency -------------------------------------------------------------------------------------------


def _time_model(
    model_path: str, backend: Backend, threads: int, sample: np.ndarray, warmup: int, repeats: int
) -> list[float]:
    """Per-call wall times (ms) of ``repeats`` batch-1 runs after ``warmup`` untimed ones."""
    import time

    run = runner(model_path, backend, threads)
    for _ in range(warmup):
        run(sample)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        run(sample)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return times


def _latency_worker() -> None:
    """Subprocess entry: read a job from stdin, print the timings as JSON (see measure_latency)."""
    job = json.loads(sys.stdin.read())
    sample = np.load(job["sample"])
    times = _time_model(job["model"], job["backend"], job["threads"], sample, job["warmup"], job["repeats"])
    print(json.dumps({"times_ms": times}))


def _run_worker(job: dict[str, Any]) -> list[float]:
    code = "from lineguard.compress import _latency_worker; _latency_worker()"
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"])}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CompressError(f"latency measurement of '{job['model']}' ({job['backend']}) failed: {tail[0]}")
    return list(json.loads(proc.stdout.strip().splitlines()[-1])["times_ms"])


def latency_stats(times_ms: Sequence[float], threads: int) -> LatencyStats:
    """Median and 99th percentile of per-call times."""
    arr = np.asarray(times_ms, dtype=np.float64)
    return LatencyStats(
        threads=threads, median_ms=float(np.median(arr)), p99_ms=float(np.percentile(arr, 99)), runs=len(arr)
    )


def measure_latency(
    models: Mapping[str, tuple[str | Path, Backend]],
    sample: np.ndarray,
    threads: Sequence[int] = (1, 2),
    warmup: int = 50,
    repeats: int = 500,
    rounds: int = 3,
    progress: bool = False,
) -> dict[str, dict[int, LatencyStats]]:
    """Batch-1 latency of several models, each measured in a fresh subprocess.

    The ``repeats`` timed calls (after ``warmup`` untimed ones) are split over ``rounds``; in every
    round each (model, threads) pair runs once, in the same order, so slow phases of a busy machine
    hit all candidates alike. ``models`` maps a name to (model file, backend); ``sample`` is one
    preprocessed 1x3xHxW image. Returns name -> threads -> stats.
    """
    if sample.ndim != 4 or sample.shape[0] != 1:
        raise CompressError(f"the latency sample must be one 1x3xHxW image, got shape {sample.shape}")
    rounds = max(1, min(rounds, repeats))
    per_round = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    times: dict[tuple[str, int], list[float]] = {(n, t): [] for n in models for t in threads}
    jobs = [(r, n, t) for r in range(rounds) for n in models for t in threads]
    with tempfile.TemporaryDirectory() as tmp:
        sample_path = Path(tmp) / "sample.npy"
        np.save(sample_path, np.ascontiguousarray(sample, dtype=np.float32))
        iterator: Any = jobs
        if progress:
            from rich.progress import track

            iterator = track(jobs, description="Measuring latency")
        for r, name, t in iterator:
            path, backend = models[name]
            job = {
                "model": str(path),
                "backend": backend,
                "threads": int(t),
                "sample": str(sample_path),
                "warmup": warmup,
                "repeats": per_round[r],
            }
            times[(name, t)].extend(_run_worker(job))
    return {n: {t: latency_stats(times[(n, t)], t) for t in threads} for n in models}


# --- the compress step for a tracked run ----------------------------------------------------------------


@dataclass(frozen=True)
class CompressResult:
    """What :func:`compress` built, measured and chose."""

    candidates: list[Candidate]
    selection: Selection
    table_markdown: str
    bundle: Path | None
    workdir: Path
    tracking_run_id: str | None
    openvino_precision: str | None
    notes: list[str]


@dataclass
class _Built:
    """A candidate before measurement: its model file and the settings it would ship with."""

    name: str
    precision: str
    backend: Backend
    path: Path
    macs: int | None
    params: int | None
    selectable: bool = True
    note: str = ""
    decision: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)


def _run_config(config: LineguardConfig, run_id: str) -> LineguardConfig:
    """The run's own recorded config (its preprocessing, augmentation and training settings), with the
    current workdir, tracking, evaluation and compression settings and the current threads/device."""
    from lineguard import tracking

    try:
        recorded = tracking.load_run_config(config, run_id)
    except (
        LineguardError,
        ValueError,
    ):  # no config.yaml, or one an older LineGuard wrote (pydantic: ValueError)
        return config
    train_cfg = recorded.train.model_copy(
        update={
            "threads": config.train.threads,
            "device": config.train.device,
            "teacher": None,
            "init_from": None,
            "weights": None,
        }
    )
    return recorded.model_copy(
        update={
            "workdir": config.workdir,
            "tracking": config.tracking,
            "evaluate": config.evaluate,
            "export": config.export,
            "compress": config.compress,
            "train": train_cfg,
        }
    )


def _finetune(
    config: LineguardConfig, dataset: Dataset, data: Any, model: torch.nn.Module, epochs: int, progress: bool
) -> torch.nn.Module:
    """Fine-tune an already built model (a pruned one) through the training loop of train.py.

    train() builds its model from the config, which cannot describe a pruned architecture, so the
    loop itself (augmentation, class balance, schedule, early stopping, best-weights restore) is
    called with the model: same code path, no second training loop.
    """

    from rich.console import Console

    from lineguard import train as train_mod

    tc = config.train.model_copy(
        update={
            "epochs": epochs,
            "warmup_epochs": 0.0,
            "freeze_epochs": 0,
            "lr": config.train.lr * config.compress.finetune_lr_scale,
        }
    )
    cfg = config.model_copy(update={"train": tc})
    train_mod.seed_everything(tc.seed, tc.threads, tc.deterministic)
    device = train_mod.resolve_device(tc.device)
    model.to(device)
    result = train_mod.fit(config=cfg, model=model, data=data, device=device,
                           console=Console(quiet=not progress), progress=progress)
    return result.model.cpu().eval()  # type: ignore[no-any-return]


def _own_decisions(
    logits: np.ndarray, decision: Mapping[str, Any], recipes: np.ndarray, pos: int
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated scores and reject decisions of logits under a bundle-style decision block."""
    from lineguard.edge.predictor import scores_from_logits

    scores = scores_from_logits(logits, float(decision.get("temperature", 1.0)), pos)
    per_recipe = decision.get("per_recipe") or {}
    t = np.array([per_recipe.get(str(r), decision["default_threshold"]) for r in recipes], np.float64)
    return scores, scores >= t


def compress(
    run_id: str,
    data: str,
    config: LineguardConfig,
    budget_ms: float | None = None,
    max_drop: float | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
) -> CompressResult:
    """Build, measure and compare the compression candidates of a tracked run; bundle the best one.

    The candidates (see the module docstring) are each evaluated like export evaluates the float
    model: temperature and per-recipe thresholds fitted on val with the candidate's own outputs,
    balanced accuracy and ECE on test. :func:`select_candidate` picks one under ``budget_ms`` (default
    ``compress.budget_ms``) and ``max_drop`` (default ``compress.max_drop``); its bundle is written to
    ``out`` (default ``<workdir>/bundles/<run>-<precision>``) with that precision label. The
    comparison table is written next to the candidates and logged to MLflow as a run nested under
    ``run_id``. When nothing fits it raises :class:`CompressError` (after writing the table), or, with
    ``compress.on_no_fit: fp32``, bundles the fp32 model and says so (``selection.fallback``, notes).
    """
    from lineguard import export as export_mod
    from lineguard import tracking
    from lineguard import train as train_mod
    from lineguard.edge.bundle import GOLDEN_FILE, load_bundle
    from lineguard.manifest import load_dataset

    cc = config.compress
    budget = cc.budget_ms if budget_ms is None else float(budget_ms)
    drop = cc.max_drop if max_drop is None else float(max_drop)
    if budget <= 0:
        raise CompressError(f"--budget-ms must be > 0, got {budget:g}")
    if not 0 <= drop <= 1:
        raise CompressError(
            f"--max-drop is a fraction of balanced accuracy (0.003 = 0.3 points), got {drop:g}"
        )
    if cc.budget_threads not in cc.threads:
        raise CompressError(
            f"compress.budget_threads ({cc.budget_threads}) must be one of compress.threads {cc.threads}"
        )
    tell = say or (lambda _msg: None)
    notes: list[str] = []
    work = Path(config.workdir) / "compress" / run_id
    work.mkdir(parents=True, exist_ok=True)

    # 1. the float reference: the export step's own bundle (golden batch, thresholds, reference stats)
    tell(f"exporting the float model of run {run_id}")
    base = export_mod.export(run_id, data, work / "base", config, overwrite=True, progress=tell).path
    bundle = load_bundle(base)
    params, pos = bundle.preprocess, bundle.positive_index
    size = (int(params.size[0]), int(params.size[1]))
    dataset = load_dataset(data)
    model, meta = tracking.load_model_from_run(config, run_id)
    macs, n_params = count_macs(model, size)
    fp32 = work / "fp32.onnx"
    shutil.copyfile(bundle.model_path, fp32)
    built = [_Built(REFERENCE, "fp32", "ort", fp32, macs, n_params)]

    # 2. static INT8 (QDQ), calibrated on preprocessed training images
    if cc.int8:
        tell(
            f"quantising to INT8 (QDQ, {cc.calibration_method} calibration on {cc.calibration_images} train images)"
        )
        calibration = calibration_batch(dataset, params, cc.calibration_images, seed=config.train.seed)
        path = quantize_int8(
            fp32,
            work / "int8-qdq.onnx",
            calibration,
            cc.calibration_method,
            cc.per_channel,
            cc.activation_type,
        )
        built.append(_Built("int8-qdq", "int8-qdq", "ort", path, macs, n_params))

    # 3. structured pruning + fine-tuning, and 4. a distilled student: both through train.py
    run_cfg = _run_config(config, run_id)
    golden_arrays = bundle.load_arrays(GOLDEN_FILE)
    golden = export_mod.GoldenBatch(
        golden_arrays["images"], golden_arrays["recipes"], golden_arrays["labels"], "base"
    )
    prepared = None
    if cc.prune_ratios or cc.distill:
        prepared = train_mod.prepare_data(dataset, params, progress=progress)
    for ratio in cc.prune_ratios:
        label = f"fp32-pruned{round(ratio * 100)}"
        tell(f"pruning {ratio:.0%} of the channels, fine-tuning {cc.finetune_epochs} epochs")
        pruned = prune(model, ratio, size)
        if cc.finetune_epochs > 0:
            pruned = _finetune(run_cfg, dataset, prepared, pruned, cc.finetune_epochs, progress)
        exported = export_mod.export_onnx(
            pruned,
            params,
            work / f"{label}.onnx",
            opset=config.export.opset,
            golden=golden,
            atol=config.export.atol,
            positive_index=pos,
        )
        built.append(_Built(label, label, "ort", exported.path, *count_macs(pruned, size)))
    if cc.distill:
        teacher_width = float(meta.get("width", run_cfg.train.width))
        student_model = cc.student_model or str(meta.get("model", run_cfg.train.model))
        student_width = round(teacher_width * cc.student_width_scale, 4)
        if student_model == meta.get("model") and student_width >= teacher_width:
            notes.append("distillation skipped: the student would be as large as the teacher")
        else:
            tell(f"distilling into {student_model} at width {student_width:g} (teacher: run {run_id[:8]})")
            tc = run_cfg.train.model_copy(
                update={
                    "model": student_model,
                    "width": student_width,
                    "teacher": run_id,
                    "epochs": cc.student_epochs or run_cfg.train.epochs,
                }
            )
            result = train_mod.train(
                run_cfg.model_copy(update={"train": tc}),
                dataset,
                data=prepared,
                run_name=f"distill-{run_id[:8]}",
                tags={"lineguard.kind": "distill", "lineguard.teacher_run": run_id},
                progress=progress,
            )
            exported = export_mod.export_onnx(
                result.model,
                params,
                work / "fp32-distilled.onnx",
                opset=config.export.opset,
                golden=golden,
                atol=config.export.atol,
                positive_index=pos,
            )
            note = f"student run {result.run_id}" if result.run_id else ""
            built.append(
                _Built(
                    "fp32-distilled",
                    "fp32-distilled",
                    "ort",
                    exported.path,
                    *count_macs(result.model, size),
                    note=note,
                )
            )

    # 5. the same fp32 model on OpenVINO, with an explicit f32 precision hint
    ov_precision = None
    if cc.openvino:
        if openvino_available():
            ov_precision = openvino_precision(fp32)
            default_precision = openvino_precision(fp32, hint=None)
            selectable = "openvino" in cc.backends
            note = f"precision {ov_precision} (hint f32; OpenVINO's default here: {default_precision})"
            if not selectable:
                note += "; comparison only (add openvino to compress.backends to deploy it)"
            built.append(_Built("fp32-openvino", "fp32", "openvino", fp32, macs, n_params, selectable, note))
        else:
            notes.append(
                "OpenVINO candidate skipped: openvino is not installed (pip install 'lineguard[openvino]')"
            )

    # 6. accuracy: each candidate's own temperature and thresholds on val, metrics on test (lineguard.evaluate,
    #    as export does for the float model); decisions compared with the float bundle's on the golden batch
    tell("evaluating every candidate on val (thresholds) and test (metrics)")
    from lineguard.evaluate import evaluate_predictions
    from lineguard.evaluate import predict as score_split
    from lineguard.evaluate.scoring import margins_from_class_logits

    classes = tuple(bundle.classes)
    first = _CandidateScorer("inputs", classes, bundle.positive_class, params, fp32, "ort")
    base_preds = {}
    for split in ("val", "test"):
        first.current = split
        base_preds[split] = score_split(first, dataset, split, positive_class=bundle.positive_class)
    golden_x = golden.inputs(params)
    ref_scores, ref_decisions = _own_decisions(
        predict_logits(fp32, "ort", golden_x, batch_size=64), bundle.meta["decision"], golden.recipes, pos
    )
    candidates: list[Candidate] = []
    for b in built:
        preds = {
            split: replace(
                p,
                margins=margins_from_class_logits(
                    predict_logits(b.path, b.backend, first.inputs[split], batch_size=64), pos
                ),
            )
            for split, p in base_preds.items()
        }
        ev = evaluate_predictions(
            preds["val"],
            preds["test"],
            config.evaluate,
            source=f"compress {b.name}",
            dataset_version=dataset.version,
        )
        blocks = ev.to_bundle_dict()
        b.decision = {**blocks["decision"], "fitted_on": "val", "notes": list(ev.notes)}
        b.evaluation = {
            **blocks["evaluation"],
            "source": f"lineguard.compress candidate {b.name} ({b.backend})",
        }
        scores, decisions = _own_decisions(
            predict_logits(b.path, b.backend, golden_x, batch_size=64), b.decision, golden.recipes, pos
        )
        candidates.append(
            Candidate(
                name=b.name,
                precision=b.precision,
                backend=b.backend,
                model_path=str(b.path),
                size_bytes=b.path.stat().st_size,
                macs=b.macs,
                params=b.params,
                balanced_accuracy=_num(ev.balanced_accuracy),
                ece=_num(ev.ece),
                agreement=float(np.mean(decisions == ref_decisions)) if len(decisions) else math.nan,
                max_score_diff=float(np.max(np.abs(scores - ref_scores), initial=0.0)),
                selectable=b.selectable,
                note=b.note,
            )
        )

    # 7. latency: fresh subprocesses, interleaved rounds, same sample for all
    tell(f"measuring latency ({cc.repeats} runs x {len(cc.threads)} thread counts x {len(built)} candidates)")
    latency = measure_latency(
        {c.name: (c.model_path, c.backend) for c in candidates},
        golden_x[:1],
        threads=cc.threads,
        warmup=cc.warmup,
        repeats=cc.repeats,
        rounds=cc.rounds,
        progress=progress,
    )
    candidates = [_with_latency(c, latency[c.name]) for c in candidates]

    # 8. choose, write the table (always), log it, bundle the choice
    selection = select_candidate(candidates, budget, drop, threads=cc.budget_threads)
    if selection.chosen is None and cc.on_no_fit == "fp32":
        reference = next(c for c in candidates if c.name == REFERENCE)
        why = f"FALLBACK (compress.on_no_fit=fp32): bundled although {selection.reasons[REFERENCE]}"
        selection = replace(
            selection, chosen=reference, reasons={**selection.reasons, REFERENCE: why}, fallback=True
        )
        notes.append(f"no candidate fits the budget and the allowed drop; the fp32 model was bundled ({why})")
    table = comparison_table(candidates, selection)
    header = (
        f"# Compression candidates for run {run_id}\n\n{selection.explain()}\n\n"
        + (f"OpenVINO precision: {ov_precision}\n\n" if ov_precision else "")
        + "".join(f"- {n}\n" for n in notes)
        + ("\n" if notes else "")
    )
    table_md = header + table
    (work / "candidates.md").write_text(table_md, encoding="utf-8")
    (work / "candidates.json").write_text(
        json.dumps([c.to_dict() for c in candidates], indent=2, default=str), encoding="utf-8"
    )
    tracking_run = None
    with tracking.start_run(
        config,
        name=f"compress-{run_id[:8]}",
        parent_run_id=run_id,
        tags={"lineguard.kind": "compress", "lineguard.source_run": run_id},
    ) as trun:
        tracking_run = trun.run_id
        trun.log_params(
            {
                "budget_ms": budget,
                "max_drop": drop,
                **tracking.flatten(cc.model_dump(mode="json"), "compress."),
            }
        )
        trun.log_text(table_md, "compress/candidates.md")
        trun.log_dict([c.to_dict() for c in candidates], "compress/candidates.json")
        metrics: dict[str, float] = {}
        for c in candidates:
            for t, s in c.latency.items():
                metrics[f"{c.name}.latency_median_ms_{t}t"] = s.median_ms
                metrics[f"{c.name}.latency_p99_ms_{t}t"] = s.p99_ms
            for k, v in (
                ("balanced_accuracy", c.balanced_accuracy),
                ("ece", c.ece),
                ("agreement", c.agreement),
            ):
                if not math.isnan(v):
                    metrics[f"{c.name}.{k}"] = v
        trun.log_metrics(metrics)
        trun.set_tags({"lineguard.chosen": selection.chosen.name if selection.chosen else "none"})
    if selection.chosen is None:
        raise CompressError(
            f"no candidate fits a {budget:g} ms budget with at most {drop * 100:.2f} points accuracy drop; "
            f"nothing was bundled. See {work / 'candidates.md'} and raise --budget-ms or --max-drop"
        )
    chosen = selection.chosen
    b = next(x for x in built if x.name == chosen.name)
    out_path = (
        Path(out) if out is not None else Path(config.workdir) / "bundles" / f"{run_id[:8]}-{chosen.name}"
    )
    evaluation = {
        **b.evaluation,
        "compression": {
            "candidate": chosen.name,
            "backend": chosen.backend,
            "latency_ms": {str(t): asdict(s) for t, s in chosen.latency.items()},
            "budget_ms": budget,
            "max_drop": drop,
            "tracking_run": tracking_run,
        },
    }
    tell(f"writing the {chosen.precision} bundle to {out_path}")
    written = export_mod.rebundle(
        base,
        out_path,
        b.path,
        chosen.precision,
        evaluation=evaluation,
        decision=b.decision,
        tar=str(out_path).endswith((".tar.gz", ".tgz")),
        overwrite=True,
    )
    return CompressResult(
        candidates, selection, table_md, Path(written), work, tracking_run, ov_precision, notes
    )


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _with_latency(c: Candidate, latency: Mapping[int, LatencyStats]) -> Candidate:
    return replace(c, latency=dict(latency))


@dataclass
class _CandidateScorer:
    """An evaluation scorer (``lineguard.evaluate.scoring.Scorer``) over one candidate model file.

    It keeps the preprocessed inputs of each split it scored in ``inputs`` so the other candidates
    run on exactly the same arrays without decoding the images again.
    """

    name: str
    classes: tuple[str, ...]
    positive_class: str
    preprocess: PreprocessParams
    path: Path
    backend: Backend
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    current: str = "val"

    def margins(self, images: Sequence[np.ndarray]) -> np.ndarray:
        from lineguard.evaluate.scoring import margins_from_class_logits
        from lineguard.preprocess import preprocess_batch

        x = (
            preprocess_batch(list(images), self.preprocess)
            if len(images)
            else np.zeros((0, 3, *self.preprocess.size), np.float32)
        )
        self.inputs[self.current] = x
        logits = predict_logits(self.path, self.backend, x, batch_size=64)
        return margins_from_class_logits(logits.reshape(len(x), -1), self.classes.index(self.positive_class))
