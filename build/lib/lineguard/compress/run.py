"""The compress step for a tracked run: build every candidate, measure it, choose one, bundle it.

See :mod:`lineguard.compress` for the candidates and how each is measured.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lineguard import LineguardError
from lineguard.compress.int8 import calibration_batch, quantize_int8
from lineguard.compress.latency import measure_latency, openvino_available, openvino_precision, predict_logits
from lineguard.compress.prune import count_macs, finetune, prune
from lineguard.compress.select import (
    REFERENCE,
    Backend,
    Candidate,
    CompressError,
    Selection,
    comparison_table,
    select_candidate,
)

if TYPE_CHECKING:
    from lineguard.config import LineguardConfig
    from lineguard.edge.decision import Decision
    from lineguard.preprocess import PreprocessParams


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
    decision: Decision | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Context:
    """What every step of one compress call shares: the run, its float bundle, data and settings."""

    run_id: str
    config: LineguardConfig
    work: Path
    base: Path | str
    bundle: Any  # lineguard.edge.Bundle of the float model
    dataset: Any  # lineguard.manifest.Dataset
    model: Any  # the run's float torch model
    meta: dict[str, Any]
    golden: Any  # lineguard.export.GoldenBatch of the float bundle
    tell: Callable[[str], None]
    progress: bool
    notes: list[str] = field(default_factory=list)

    @property
    def params(self) -> PreprocessParams:
        return self.bundle.preprocess  # type: ignore[no-any-return]

    @property
    def size(self) -> tuple[int, int]:
        return int(self.params.size[0]), int(self.params.size[1])


def _run_config(config: LineguardConfig, run_id: str) -> LineguardConfig:
    """The run's own recorded config (its preprocessing, augmentation and training settings), with the
    current workdir, tracking, evaluation and compression settings and the current threads/device.

    Pruned fine-tuning and distillation train with these settings; a run whose config cannot be
    read is an error, never silently replaced by the current config.
    """
    from lineguard import tracking

    try:
        recorded = tracking.load_run_config(config, run_id)
    except (LineguardError, ValueError) as exc:  # no config.yaml, or one LineGuard cannot validate (pydantic)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompressError(
            f"run {run_id}: its recorded config cannot be read ({first[:200]}); pruning and distillation "
            "re-train with the run's own settings -- set compress.prune_ratios=[] and compress.distill=false "
            "to compress without them"
        ) from None
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


def _check_options(config: LineguardConfig, budget: float, drop: float) -> None:
    cc = config.compress
    if budget <= 0:
        raise CompressError(f"--budget-ms must be > 0, got {budget:g}")
    if not 0 <= drop <= 1:
        raise CompressError(f"--max-drop is a fraction of balanced accuracy (0.003 = 0.3 points), got {drop:g}")
    if cc.budget_threads not in cc.threads:
        raise CompressError(
            f"compress.budget_threads ({cc.budget_threads}) must be one of compress.threads {cc.threads}"
        )


def _reference(ctx: _Context) -> _Built:
    """The float reference: the export step's own fp32 model."""
    fp32 = ctx.work / "fp32.onnx"
    shutil.copyfile(ctx.bundle.model_path, fp32)
    return _Built(REFERENCE, "fp32", "ort", fp32, *count_macs(ctx.model, ctx.size))


def _int8(ctx: _Context, fp32: _Built) -> _Built:
    """Static INT8 (QDQ), calibrated on preprocessed training images."""
    cc = ctx.config.compress
    ctx.tell(f"quantising to INT8 (QDQ, {cc.calibration_method} calibration on {cc.calibration_images} train images)")
    calibration = calibration_batch(ctx.dataset, ctx.params, cc.calibration_images, seed=ctx.config.train.seed)
    path = quantize_int8(fp32.path, ctx.work / "int8-qdq.onnx", calibration, cc.calibration_method, cc.per_channel,
                         cc.activation_type)
    return _Built("int8-qdq", "int8-qdq", "ort", path, fp32.macs, fp32.params)


def _export(ctx: _Context, model: Any, name: str) -> Path:
    from lineguard import export as export_mod

    ex = ctx.config.export
    return export_mod.export_onnx(model, ctx.params, ctx.work / f"{name}.onnx", opset=ex.opset, golden=ctx.golden,
                                  atol=ex.atol, positive_index=ctx.bundle.positive_index).path


def _trained(ctx: _Context) -> list[_Built]:
    """Structured pruning + fine-tuning, and a distilled student: both through train.py."""
    from lineguard import train as train_mod

    cc = ctx.config.compress
    if not (cc.prune_ratios or cc.distill):
        return []
    run_cfg = _run_config(ctx.config, ctx.run_id)
    prepared = train_mod.prepare_data(ctx.dataset, ctx.params, progress=ctx.progress)
    built: list[_Built] = []
    for ratio in cc.prune_ratios:
        label = f"fp32-pruned{round(ratio * 100)}"
        ctx.tell(f"pruning {ratio:.0%} of the channels, fine-tuning {cc.finetune_epochs} epochs")
        pruned = prune(ctx.model, ratio, ctx.size)
        if cc.finetune_epochs > 0:
            pruned = finetune(run_cfg, ctx.dataset, prepared, pruned, cc.finetune_epochs, ctx.progress)
        built.append(_Built(label, label, "ort", _export(ctx, pruned, label), *count_macs(pruned, ctx.size)))
    if not cc.distill:
        return built
    teacher_width = float(ctx.meta.get("width", run_cfg.train.width))
    student_model = cc.student_model or str(ctx.meta.get("model", run_cfg.train.model))
    student_width = round(teacher_width * cc.student_width_scale, 4)
    if student_model == ctx.meta.get("model") and student_width >= teacher_width:
        ctx.notes.append("distillation skipped: the student would be as large as the teacher")
        return built
    ctx.tell(f"distilling into {student_model} at width {student_width:g} (teacher: run {ctx.run_id[:8]})")
    tc = run_cfg.train.model_copy(update={"model": student_model, "width": student_width, "teacher": ctx.run_id,
                                          "epochs": cc.student_epochs or run_cfg.train.epochs})
    result = train_mod.train(
        run_cfg.model_copy(update={"train": tc}), ctx.dataset, data=prepared, run_name=f"distill-{ctx.run_id[:8]}",
        tags={"lineguard.kind": "distill", "lineguard.teacher_run": ctx.run_id}, progress=ctx.progress,
    )
    note = f"student run {result.run_id}" if result.run_id else ""
    built.append(_Built("fp32-distilled", "fp32-distilled", "ort", _export(ctx, result.model, "fp32-distilled"),
                        *count_macs(result.model, ctx.size), note=note))
    return built


def _openvino(ctx: _Context, fp32: _Built) -> tuple[_Built | None, str | None]:
    """The same fp32 model on OpenVINO with an explicit f32 precision hint, and the precision it runs at."""
    cc = ctx.config.compress
    if not cc.openvino:
        return None, None
    if not openvino_available():
        ctx.notes.append("OpenVINO candidate skipped: openvino is not installed (pip install 'lineguard[openvino]')")
        return None, None
    precision = openvino_precision(fp32.path)
    default_precision = openvino_precision(fp32.path, hint=None)
    selectable = "openvino" in cc.backends
    note = f"precision {precision} (hint f32; OpenVINO's default here: {default_precision})"
    if not selectable:
        note += "; comparison only (add openvino to compress.backends to deploy it)"
    return _Built("fp32-openvino", "fp32", "openvino", fp32.path, fp32.macs, fp32.params, selectable, note), precision


def _measure_accuracy(ctx: _Context, built: list[_Built], fp32: Path) -> tuple[list[Candidate], np.ndarray]:
    """Each candidate's own Decision fitted on val, metrics on test, decisions vs the float bundle's (golden)."""
    from lineguard.evaluate import evaluate_predictions
    from lineguard.evaluate import predict as score_split
    from lineguard.evaluate.scoring import margins_from_class_logits

    ctx.tell("evaluating every candidate on val (thresholds) and test (metrics)")
    bundle, pos = ctx.bundle, ctx.bundle.positive_index
    first = _CandidateScorer("inputs", tuple(bundle.classes), bundle.positive_class, ctx.params, fp32, "ort")
    base_preds = {}
    for split in ("val", "test"):
        first.current = split
        base_preds[split] = score_split(first, ctx.dataset, split, positive_class=bundle.positive_class)
    golden_x = ctx.golden.inputs(ctx.params)
    ref_scores, ref_rejects = _golden_decisions(fp32, "ort", golden_x, bundle.decision, ctx.golden.recipes, pos)
    candidates: list[Candidate] = []
    for b in built:
        preds = {
            split: replace(p, margins=margins_from_class_logits(
                predict_logits(b.path, b.backend, first.inputs[split], batch_size=64), pos))
            for split, p in base_preds.items()
        }
        ev = evaluate_predictions(preds["val"], preds["test"], ctx.config.evaluate, source=f"compress {b.name}",
                                  dataset_version=ctx.dataset.version)
        b.decision = ev.decision
        b.evaluation = {**ev.headline(), "source": f"lineguard.compress candidate {b.name} ({b.backend})"}
        scores, rejects = _golden_decisions(b.path, b.backend, golden_x, ev.decision, ctx.golden.recipes, pos)
        candidates.append(Candidate(
            name=b.name, precision=b.precision, backend=b.backend, model_path=str(b.path),
            size_bytes=b.path.stat().st_size, macs=b.macs, params=b.params,
            balanced_accuracy=_num(ev.balanced_accuracy), ece=_num(ev.ece),
            agreement=float(np.mean(rejects == ref_rejects)) if len(rejects) else math.nan,
            max_score_diff=float(np.max(np.abs(scores - ref_scores), initial=0.0)),
            selectable=b.selectable, note=b.note,
        ))
    return candidates, golden_x


def _golden_decisions(model: Path, backend: Backend, golden_x: np.ndarray, decision: Decision, recipes: np.ndarray,
                      pos: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated scores and reject decisions of a model on the golden batch under ``decision``."""
    from lineguard.edge.predictor import scores_from_logits

    scores = scores_from_logits(predict_logits(model, backend, golden_x, batch_size=64), decision.temperature, pos)
    return scores, decision.rejects(scores, recipes)


def _choose(ctx: _Context, candidates: list[Candidate], budget: float, drop: float) -> Selection:
    """:func:`select_candidate`, and the fp32 fallback when ``compress.on_no_fit`` allows it (said loudly)."""
    selection = select_candidate(candidates, budget, drop, threads=ctx.config.compress.budget_threads)
    if selection.chosen is None and ctx.config.compress.on_no_fit == "fp32":
        reference = next(c for c in candidates if c.name == REFERENCE)
        why = f"FALLBACK (compress.on_no_fit=fp32): bundled although {selection.reasons[REFERENCE]}"
        selection = replace(selection, chosen=reference, reasons={**selection.reasons, REFERENCE: why}, fallback=True)
        ctx.notes.append(f"no candidate fits the budget and the allowed drop; the fp32 model was bundled ({why})")
    return selection


def _record(ctx: _Context, candidates: list[Candidate], selection: Selection, ov_precision: str | None,
            budget: float, drop: float) -> tuple[str, str | None]:
    """Write the table next to the candidates (always) and log it as an MLflow run nested under the run."""
    from lineguard import tracking

    table = comparison_table(candidates, selection)
    header = (
        f"# Compression candidates for run {ctx.run_id}\n\n{selection.explain()}\n\n"
        + (f"OpenVINO precision: {ov_precision}\n\n" if ov_precision else "")
        + "".join(f"- {n}\n" for n in ctx.notes)
        + ("\n" if ctx.notes else "")
    )
    table_md = header + table
    (ctx.work / "candidates.md").write_text(table_md, encoding="utf-8")
    (ctx.work / "candidates.json").write_text(
        json.dumps([c.to_dict() for c in candidates], indent=2, default=str), encoding="utf-8"
    )
    with tracking.start_run(
        ctx.config, name=f"compress-{ctx.run_id[:8]}", parent_run_id=ctx.run_id,
        tags={"lineguard.kind": "compress", "lineguard.source_run": ctx.run_id},
    ) as trun:
        trun.log_params({"budget_ms": budget, "max_drop": drop,
                         **tracking.flatten(ctx.config.compress.model_dump(mode="json"), "compress.")})
        trun.log_text(table_md, "compress/candidates.md")
        trun.log_dict([c.to_dict() for c in candidates], "compress/candidates.json")
        metrics: dict[str, float] = {}
        for c in candidates:
            for t, s in c.latency.items():
                metrics[f"{c.name}.latency_median_ms_{t}t"] = s.median_ms
                metrics[f"{c.name}.latency_p99_ms_{t}t"] = s.p99_ms
            for k, v in (("balanced_accuracy", c.balanced_accuracy), ("ece", c.ece), ("agreement", c.agreement)):
                if not math.isnan(v):
                    metrics[f"{c.name}.{k}"] = v
        trun.log_metrics(metrics)
        trun.set_tags({"lineguard.chosen": selection.chosen.name if selection.chosen else "none"})
        return table_md, trun.run_id


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

    The candidates (see :mod:`lineguard.compress`) are each evaluated like export evaluates the float
    model: a Decision (temperature and per-recipe thresholds) fitted on val with the candidate's own
    outputs, balanced accuracy and ECE on test; the chosen candidate ships its own Decision.
    :func:`select_candidate` picks one under ``budget_ms`` (default ``compress.budget_ms``) and
    ``max_drop`` (default ``compress.max_drop``); its bundle is written to ``out`` (default
    ``<workdir>/bundles/<run>-<precision>``) with that precision label. The comparison table is written
    next to the candidates and logged to MLflow as a run nested under ``run_id``. When nothing fits it
    raises :class:`CompressError` (after writing the table), or, with ``compress.on_no_fit: fp32``,
    bundles the fp32 model and says so (``selection.fallback``, notes).
    """
    from lineguard import export as export_mod
    from lineguard import tracking
    from lineguard.edge.bundle import GOLDEN_FILE, load_bundle
    from lineguard.manifest import load_dataset

    cc = config.compress
    budget = cc.budget_ms if budget_ms is None else float(budget_ms)
    drop = cc.max_drop if max_drop is None else float(max_drop)
    _check_options(config, budget, drop)
    tell = say or (lambda _msg: None)
    work = Path(config.workdir) / "compress" / run_id
    work.mkdir(parents=True, exist_ok=True)

    # 1. the float reference: the export step's own bundle (golden batch, Decision, reference stats)
    tell(f"exporting the float model of run {run_id}")
    base = export_mod.export(run_id, data, work / "base", config, overwrite=True, progress=tell).path
    bundle = load_bundle(base)
    g = bundle.load_arrays(GOLDEN_FILE)
    model, meta = tracking.load_model_from_run(config, run_id)
    ctx = _Context(run_id, config, work, base, bundle, load_dataset(data), model, meta,
                   export_mod.GoldenBatch(g["images"], g["recipes"], g["labels"], "base"), tell, progress)

    # 2. the candidates: fp32, INT8, pruned and distilled, the fp32 model on OpenVINO
    fp32 = _reference(ctx)
    built = [fp32, *([_int8(ctx, fp32)] if cc.int8 else []), *_trained(ctx)]
    ov_built, ov_precision = _openvino(ctx, fp32)
    if ov_built is not None:
        built.append(ov_built)

    # 3. accuracy (each candidate's own Decision) and 4. latency (fresh subprocesses, interleaved rounds)
    candidates, golden_x = _measure_accuracy(ctx, built, fp32.path)
    tell(f"measuring latency ({cc.repeats} runs x {len(cc.threads)} thread counts x {len(built)} candidates)")
    latency = measure_latency({c.name: (c.model_path, c.backend) for c in candidates}, golden_x[:1],
                              threads=cc.threads, warmup=cc.warmup, repeats=cc.repeats, rounds=cc.rounds,
                              progress=progress)
    candidates = [replace(c, latency=dict(latency[c.name])) for c in candidates]

    # 5. choose, write and log the table (always), bundle the choice
    selection = _choose(ctx, candidates, budget, drop)
    table_md, tracking_run = _record(ctx, candidates, selection, ov_precision, budget, drop)
    if selection.chosen is None:
        raise CompressError(
            f"no candidate fits a {budget:g} ms budget with at most {drop * 100:.2f} points accuracy drop; "
            f"nothing was bundled. See {work / 'candidates.md'} and raise --budget-ms or --max-drop"
        )
    chosen = selection.chosen
    b = next(x for x in built if x.name == chosen.name)
    out_path = Path(out) if out is not None else Path(config.workdir) / "bundles" / f"{run_id[:8]}-{chosen.name}"
    evaluation = {
        **b.evaluation,
        "compression": {
            "candidate": chosen.name, "backend": chosen.backend,
            "latency_ms": {str(t): asdict(s) for t, s in chosen.latency.items()},
            "budget_ms": budget, "max_drop": drop, "tracking_run": tracking_run,
        },
    }
    tell(f"writing the {chosen.precision} bundle to {out_path}")
    written = export_mod.rebundle(base, out_path, b.path, chosen.precision, evaluation=evaluation, decision=b.decision,
                                  tar=str(out_path).endswith((".tar.gz", ".tgz")), overwrite=True)
    return CompressResult(candidates, selection, table_md, Path(written), work, tracking_run, ov_precision, ctx.notes)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


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
            else np.zeros((0, *self.preprocess.input_shape), np.float32)
        )
        self.inputs[self.current] = x
        logits = predict_logits(self.path, self.backend, x, batch_size=64)
        return margins_from_class_logits(logits.reshape(len(x), -1), self.classes.index(self.positive_class))
