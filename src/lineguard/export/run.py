"""The export step for a tracked run: model -> ONNX + parity -> evaluation -> reference -> bundle.

:func:`export` loads the run's model, exports it, scores val/test with the exported
model itself, chooses temperature and per-recipe thresholds (``lineguard.evaluate``),
summarises the test split, computes reference statistics and writes the bundle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lineguard.edge.bundle import MODEL_FILE
from lineguard.edge.decision import Decision
from lineguard.edge.runner import Runner, open_runner
from lineguard.export.bundle import monitor_reference, reference_statistics, write_bundle
from lineguard.export.onnx import export_onnx, onnx_outputs
from lineguard.export.parity import ExportError, ParityReport, compare_outputs, golden_batch
from lineguard.monitor.reference import MIN_RECIPE_IMAGES
from lineguard.preprocess import PreprocessParams, image_stats, preprocess_batch

if TYPE_CHECKING:
    from lineguard.config import LineguardConfig

# --- the export step for a tracked run -------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote (a local path, or the URL of an uploaded .tar.gz) and the figures it checked."""

    path: Path | str
    parity: ParityReport
    decision: Decision
    evaluation: dict[str, Any]
    notes: list[str]


def _batched(runner: Runner, images: list[np.ndarray], params: PreprocessParams,
             batch_size: int = 64) -> dict[str, np.ndarray]:
    outs: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(images), batch_size):
        for k, v in runner.outputs(preprocess_batch(images[i : i + batch_size], params)).items():
            outs.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in outs.items()}


@dataclass
class _OnnxScorer:
    """The exported ONNX file as an evaluation scorer (``lineguard.evaluate.scoring.Scorer``)."""

    name: str
    classes: tuple[str, ...]
    positive_class: str
    preprocess: PreprocessParams
    runner: Runner

    def margins(self, images: Sequence[np.ndarray]) -> np.ndarray:
        from lineguard.evaluate.scoring import margins_from_class_logits

        logits = _batched(self.runner, list(images), self.preprocess)["logits"]
        return margins_from_class_logits(logits, self.classes.index(self.positive_class))


def export(
    run_id: str,
    data: str,
    out: str | Path,
    config: LineguardConfig,
    tar: bool = False,
    name: str | None = None,
    version: str | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a tracked run to a bundle: ONNX + parity, thresholds, evaluation, reference statistics.

    The scores behind the thresholds, the evaluation summary and the reference score
    histograms come from the exported ONNX model itself, so the numbers in bundle.json
    describe the artefact that ships. ``out`` is a local folder (or ``.tar.gz``), or an
    fsspec URL (``s3://...``) to which the bundle is uploaded as one ``.tar.gz``.
    """
    import tempfile

    from lineguard import storage, tracking
    from lineguard.evaluate import evaluate_predictions
    from lineguard.evaluate import predict as score_split
    from lineguard.manifest import load_dataset

    say = progress or (lambda _msg: None)
    remote_url = None if storage.is_local(str(out)) else str(out)
    if remote_url is not None:  # object storage: build the .tar.gz locally, upload it at the end
        tar = True
        if not remote_url.endswith((".tar.gz", ".tgz")):
            remote_url += ".tar.gz"
        if storage.exists(remote_url) and not overwrite:
            raise ExportError(f"'{remote_url}' already exists; choose a new --out or pass --overwrite")
    out = Path(storage.local_path(str(out))) if remote_url is None else Path("bundle.tar.gz")
    if tar and not out.name.endswith((".tar.gz", ".tgz")):
        out = out.with_name(out.name + ".tar.gz")
    if remote_url is None and out.exists() and not overwrite:
        raise ExportError(f"'{out}' already exists; choose a new --out or pass --overwrite")
    say(f"loading run {run_id}")
    model, meta = tracking.load_model_from_run(config, run_id)
    record = tracking.load_run(config, run_id)
    dataset = load_dataset(data)
    classes = [str(c) for c in meta.get("classes", dataset.classes)]
    positive = str(meta.get("positive_class", dataset.positive_class))
    if positive not in classes:
        raise ExportError(f"run {run_id}: positive class '{positive}' is not one of its classes {classes}")
    if len(classes) != 2:
        raise ExportError(f"run {run_id} has {len(classes)} classes; bundles support two (good vs defect) for now")
    if sorted(dataset.classes) != sorted(classes):
        raise ExportError(f"dataset '{data}' has classes {dataset.classes} but run {run_id} was trained on {classes}")
    if "preprocess" not in meta:
        raise ExportError(f"run {run_id} recorded no preprocessing parameters (model/model.json has no "
                          "'preprocess'); the edge could not feed its model as it was trained -- retrain it")
    params = PreprocessParams.from_dict(meta["preprocess"])
    pos_idx = classes.index(positive)
    ex = config.export
    golden = golden_batch(dataset, params, ex.golden_size, seed=0, classes=classes)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lineguard-export-") as work:
        onnx_path = Path(work) / MODEL_FILE
        say(f"exporting {meta.get('model', type(model).__name__)} to ONNX (opset {ex.opset})")
        exported = export_onnx(model, params, onnx_path, opset=ex.opset, golden=golden, atol=ex.atol,
                               positive_index=pos_idx)

        run_onnx = open_runner(onnx_path, "ort", threads=0)
        say("evaluating the exported model: temperature and thresholds on val, metrics on test")
        scorer = _OnnxScorer(f"run {run_id[:8]} (ONNX)", tuple(classes), positive, params, run_onnx)
        val = score_split(scorer, dataset, "val", positive_class=positive)
        test = score_split(scorer, dataset, "test", positive_class=positive)
        result = evaluate_predictions(val, test, config.evaluate, source=scorer.name, dataset_version=dataset.version)
        decision = result.decision
        evaluation = {**result.headline(), "source": "lineguard.evaluate on the exported ONNX model"}
        notes += list(result.notes) + list(result.warnings)
        # the parity check again, now with the real temperature and thresholds
        actual = onnx_outputs(onnx_path, golden.inputs(params))
        parity = compare_outputs(exported.expected, actual, decision.thresholds_for(golden.recipes),
                                 decision.temperature, pos_idx, ex.atol, "torch-fp32")
        if not parity.passed:
            raise ExportError(f"parity check failed with the fitted thresholds: {parity.to_dict()}")

        say("computing reference statistics of the training data")
        train_rows = dataset.split("train")
        if len(train_rows) > ex.reference_images:
            train_rows = train_rows.sample(n=ex.reference_images, random_state=0).sort_index()
        train_images = dataset.read_images(train_rows)
        train_out = _batched(run_onnx, train_images, params) if train_images else {"embedding": np.zeros((0, 0))}
        val_scores = decision.scores_from_margins(val.margins) if len(val) else None
        val_class = np.where(val.labels == 1, pos_idx, 1 - pos_idx)
        reference, ref_arrays = reference_statistics(
            [image_stats(img) for img in train_images], train_out.get("embedding", np.zeros((0, 0))),
            val_scores, val_class, classes)
        reference["source"] = f"train split, {len(train_images)} images"
        train_defect = (train_rows["label"].to_numpy() == positive).astype(np.int64)
        if len(train_images) < MIN_RECIPE_IMAGES:
            notes.append(f"only {len(train_images)} training images: the bundle ships no drift-monitor reference "
                         f"(it needs at least {MIN_RECIPE_IMAGES}; see export.reference_images)")
        else:
            say("calibrating the drift monitor on the training data")
            monitor_block, monitor_arrays = monitor_reference(
                train_images, train_rows["recipe"].astype(str).tolist(), train_out.get("embedding"),
                val_scores, (val_class == pos_idx).astype(np.int64) if val_scores is not None else None,
                float(train_defect.mean()), arl0=ex.monitor_arl0, params=params,
                val_recipes=np.asarray(val.recipes).astype(str) if val_scores is not None else None)
            reference["monitor"] = monitor_block
            ref_arrays = {**ref_arrays, **monitor_arrays}
            reference["arrays"] = sorted(ref_arrays)

        # The commit the run was trained at -- never this checkout's: an unknown commit stays empty, and says so.
        git_commit = str(meta.get("git_commit") or record.tags.get(tracking.TAG_GIT_COMMIT) or "")
        if not git_commit:
            notes.append(f"run {run_id} recorded no git commit; lineage.git_commit is left empty")
        lineage = {
            "run_id": run_id,
            "dataset_version": str(meta.get("dataset_version") or record.dataset_version or ""),
            "git_commit": git_commit,
            "model": str(meta.get("model", "")),
            "width": meta.get("width"),
            "export_dataset": str(data),
            "export_dataset_version": dataset.version,
        }
        if lineage["dataset_version"] and lineage["dataset_version"] != dataset.version:
            notes.append(
                f"run {run_id} was trained on dataset {lineage['dataset_version']}, thresholds and evaluation "
                f"come from dataset {dataset.version}")
        if not lineage["dataset_version"]:
            lineage["dataset_version"] = dataset.version
        say("writing the bundle")
        path: Path | str = write_bundle(
            out if remote_url is None else Path(work) / out.name, onnx_path, classes=classes,
            positive_class=positive, preprocess=params, golden=golden,
            expected=exported.expected, parity=parity, decision=decision, recipes=dataset.recipes,
            precision="fp32", opset=ex.opset, lineage=lineage, evaluation=evaluation, reference=reference,
            reference_arrays=ref_arrays, name=name or config.tracking.registered_model,
            version=version or run_id[:8], tar=tar, overwrite=overwrite,
        )
        if remote_url is not None:
            say(f"uploading to {remote_url}")
            storage.write_bytes(remote_url, Path(path).read_bytes())
            path = remote_url
    return ExportResult(path=path, parity=parity, decision=decision, evaluation=evaluation, notes=notes)
