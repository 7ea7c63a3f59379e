"""Writing bundles: reference statistics, the atomic writer, and re-bundling another ONNX model.

:func:`write_bundle` writes a bundle folder (or ``.tar.gz``) atomically: ``model.onnx``,
``bundle.json`` (schema 1, see docs/deployment.md), ``reference.npz`` (training-data
statistics for drift monitoring) and ``golden.npz`` (the golden images with the outputs
they must give, so parity can be re-checked on any machine with ``lineguard bundle
verify``). It takes any ONNX file and a precision label, so compression reuses it
(:func:`rebundle` swaps the model of an existing bundle).
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import shutil
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from lineguard import storage
from lineguard.edge.bundle import (
    BUNDLE_FILE,
    GOLDEN_FILE,
    INPUT_NAME,
    MODEL_FILE,
    REFERENCE_FILE,
    SCHEMA_VERSION,
    load_bundle,
    sha256_file,
)
from lineguard.edge.decision import Decision
from lineguard.edge.signing import SIGNATURE_FILE, integrity_block, signature_document
from lineguard.export.onnx import onnx_outputs
from lineguard.export.parity import ExportError, GoldenBatch, ParityReport, compare_outputs
from lineguard.preprocess import PreprocessParams

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
HIST_BINS = 20
EMBEDDING_SAMPLE = 256


# --- reference statistics --------------------------------------------------------------------------


def _summary(values: np.ndarray) -> dict[str, Any]:
    v = np.asarray(values, np.float64)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        hi = lo + 1e-6
    counts, edges = np.histogram(v, bins=HIST_BINS, range=(lo, hi))
    return {
        "mean": float(v.mean()), "std": float(v.std()),
        "quantiles": {str(q): float(x) for q, x in zip(QUANTILES, np.quantile(v, QUANTILES), strict=True)},
        "hist": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def reference_statistics(
    stats_rows: Sequence[Mapping[str, float]],
    embeddings: np.ndarray,
    val_scores: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    classes: Sequence[str] = ("good", "bad"),
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Pure: the ``reference`` block of bundle.json and the arrays of reference.npz.

    ``stats_rows`` are :func:`lineguard.preprocess.image_stats` of training images;
    ``embeddings`` the model's embeddings of the same images; ``val_scores`` /
    ``val_labels`` the calibrated scores and class indices on the validation split.
    """
    arrays: dict[str, np.ndarray] = {}
    block: dict[str, Any] = {"file": REFERENCE_FILE}
    names = sorted(stats_rows[0]) if stats_rows else []
    table = np.array([[row[k] for k in names] for row in stats_rows], np.float32).reshape(len(stats_rows), len(names))
    block["image_stats"] = {"n": len(stats_rows), **{k: _summary(table[:, i]) for i, k in enumerate(names)}}
    arrays["image_stats"] = table
    arrays["image_stat_names"] = np.array(names, dtype=np.str_)
    edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
    if val_scores is not None and val_labels is not None and len(val_scores):
        per_class = {
            c: [int(x) for x in np.histogram(val_scores[val_labels == i], bins=edges)[0]] for i, c in enumerate(classes)
        }
        block["score_hist"] = {"split": "val", "edges": [float(e) for e in edges], "per_class": per_class}
        arrays["val_scores"] = np.asarray(val_scores, np.float32)
        arrays["val_labels"] = np.asarray(val_labels, np.int64)
    else:
        block["score_hist"] = {}
    emb = np.asarray(embeddings, np.float64)
    if emb.ndim == 2 and len(emb):
        mean = emb.mean(axis=0)
        cov = np.cov(emb, rowvar=False) if len(emb) > 1 else np.zeros((emb.shape[1], emb.shape[1]))
        rng = np.random.default_rng(seed)
        sample = emb[np.sort(rng.choice(len(emb), size=min(EMBEDDING_SAMPLE, len(emb)), replace=False))]
        arrays["embedding_mean"] = mean.astype(np.float32)
        arrays["embedding_cov"] = np.atleast_2d(cov).astype(np.float32)
        arrays["embedding_sample"] = sample.astype(np.float32)
        dist = np.linalg.norm(emb - mean, axis=1)
        block["embedding"] = {
            "n": len(emb), "dim": int(emb.shape[1]),
            "arrays": ["embedding_mean", "embedding_cov", "embedding_sample"],
            "distance_to_mean": _summary(dist),
        }
    else:
        block["embedding"] = {}
    block["arrays"] = sorted(arrays)
    return block, arrays


def monitor_reference(
    images: Sequence[np.ndarray],
    recipes: Sequence[str],
    embeddings: np.ndarray | None,
    val_scores: np.ndarray | None = None,
    val_defect: np.ndarray | None = None,
    train_defect_share: float | None = None,
    arl0: float = 100_000.0,
    seed: int = 0,
    val_recipes: Sequence[str] | np.ndarray | None = None,
    *,
    params: PreprocessParams | None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The monitoring reference (:mod:`lineguard.monitor`) of the training images, calibrated to ``arl0``:
    ``(summary for bundle.json's reference.monitor, arrays for reference.npz)``.

    ``params`` is the bundle's preprocessing: the image signals are those of the model inputs,
    computed by the function the edge runs on every frame
    (:class:`lineguard.monitor.signals.ImageSignals`), so train and edge agree. ``val_defect`` is
    1 where a validation item is a defect; ``train_defect_share`` the training split's defect
    share (the prior the calibrated scores were fitted under); ``val_recipes`` the recipe of each
    validation item (for the per-recipe output monitor).
    """
    from lineguard.monitor import calibrate_cusum, reference_from_images

    ref = reference_from_images(images, recipes, embeddings, params, val_scores=val_scores, val_labels=val_defect,
                                val_recipes=val_recipes, prior=train_defect_share, seed=seed)
    cal = calibrate_cusum(ref.reference_z(), arl0, group_sizes=ref.group_sizes(),
                          groups=ref.rows(list(ref.value_recipes)), seed=seed)
    ref = ref.with_calibration(cal.to_arrays())
    return ref.summary(), ref.to_arrays()


# --- the bundle ---------------------------------------------------------------------------------


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, allow_pickle=False, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, so bundle.json is strict JSON."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _is_our_bundle(out: Path) -> str | None:
    """None when ``out`` may be replaced (a LineGuard bundle folder or archive), else why not."""
    if out.is_symlink():
        return "is a symbolic link"
    if out.is_dir():
        if not (out / BUNDLE_FILE).is_file():
            return f"is a folder without {BUNDLE_FILE}"
        try:
            listed = set(json.loads((out / BUNDLE_FILE).read_text(encoding="utf-8")).get("files", {}))
        except (OSError, ValueError, AttributeError):
            return f"has an unreadable {BUNDLE_FILE}"
        strangers = sorted(p.name for p in out.iterdir() if p.name not in listed | {BUNDLE_FILE, SIGNATURE_FILE}
                           or not p.is_file() or p.is_symlink())
        return f"holds '{strangers[0]}', which the bundle does not list" if strangers else None
    try:
        with tarfile.open(out, "r:*") as tf:
            names = {PurePosixPath(m.name).name for m in tf.getmembers()[:256]}
    except (tarfile.TarError, OSError, EOFError):
        return "is a file that is not a bundle archive"
    return None if BUNDLE_FILE in names else f"is an archive without {BUNDLE_FILE}"


def _publish(tmp: Path, out: Path, tar: bool, overwrite: bool) -> Path:
    """Move a finished temp folder to ``out`` (or pack it to ``out`` as .tar.gz) in one rename.

    ``overwrite`` replaces only a LineGuard bundle (a folder holding bundle.json and the
    files it lists, or a bundle archive); anything else at ``out`` is refused, never deleted.
    """
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise ExportError(f"'{out}' already exists; choose a new --out or pass --overwrite")
        why = _is_our_bundle(out)
        if why is not None:
            raise ExportError(f"'{out}' {why}; --overwrite only replaces a LineGuard bundle -- choose a new --out")
    if tar:
        tmp_tar = Path(storage.partial_name(str(out)))
        try:
            with tarfile.open(tmp_tar, "w:gz") as tf:
                for f in sorted(tmp.iterdir()):
                    tf.add(f, arcname=f.name, recursive=False)
            os.replace(tmp_tar, out)
        finally:
            tmp_tar.unlink(missing_ok=True)
        return out
    if out.exists():
        aside = Path(storage.partial_name(str(out), "old"))
        os.replace(out, aside)
        os.replace(tmp, out)
        if aside.is_dir():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)
    else:
        os.replace(tmp, out)
    return out


def write_bundle(
    out: str | Path,
    model_file: str | Path,
    *,
    classes: Sequence[str],
    positive_class: str,
    preprocess: PreprocessParams,
    golden: GoldenBatch,
    expected: Mapping[str, np.ndarray],
    parity: ParityReport | Mapping[str, Any],
    decision: Decision,
    recipes: Sequence[str] = (),
    precision: str = "fp32",
    opset: int | None = None,
    lineage: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    reference: Mapping[str, Any] | None = None,
    reference_arrays: Mapping[str, np.ndarray] | None = None,
    name: str = "lineguard",
    version: str = "1",
    tar: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a bundle folder (or ``.tar.gz`` when ``tar`` or ``out`` ends in .tar.gz) atomically.

    ``model_file`` is any single-file ONNX model with input ``image`` and output
    ``logits`` (``embedding`` optional); ``precision`` labels it (``fp32``, ``int8-qdq``,
    ...). ``expected`` holds the outputs this model must give on ``golden`` in the
    reference runtime; ``parity`` records how they compare with the float model.
    ``decision`` (temperature, thresholds, cost) becomes the ``decision`` block as
    :meth:`Decision.to_dict` writes it. Everything is written to a temp folder next to ``out``, hashed into
    bundle.json, verified by loading it back, and only then renamed into place.
    """
    out = Path(out)
    tar = bool(tar) or out.name.endswith((".tar.gz", ".tgz"))
    model_file = Path(model_file)
    if not model_file.is_file():
        raise ExportError(f"model file '{model_file}' does not exist")
    if positive_class not in classes:
        raise ExportError(f"positive class '{positive_class}' is not one of {list(classes)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    storage.remove_stale(str(out))  # what a killed export left behind
    tmp = Path(storage.partial_name(str(out)))
    tmp.mkdir()
    try:
        shutil.copyfile(model_file, tmp / MODEL_FILE)
        golden_arrays = {
            "images": golden.images, "recipes": np.asarray(golden.recipes, dtype=np.str_),
            "labels": golden.labels,
            **{f"expected_{k}": np.asarray(v, np.float32) for k, v in expected.items()},
        }
        (tmp / GOLDEN_FILE).write_bytes(_npz_bytes(golden_arrays))
        ref_block = dict(reference or {})
        if reference_arrays:
            (tmp / REFERENCE_FILE).write_bytes(_npz_bytes(reference_arrays))
            ref_block["file"] = REFERENCE_FILE
        files = {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}
        n_cls = int(np.asarray(expected["logits"]).shape[1])
        outputs: dict[str, list[int | None]] = {"logits": [None, n_cls]}
        if "embedding" in expected:
            outputs["embedding"] = [None, int(np.asarray(expected["embedding"]).shape[1])]
        parity_block = parity.to_dict() if isinstance(parity, ParityReport) else dict(parity)
        meta = {
            "schema": SCHEMA_VERSION,
            "name": name,
            "version": str(version),
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "model": {
                "file": MODEL_FILE, "sha256": files[MODEL_FILE], "format": "onnx", "opset": opset,
                "precision": precision, "inputs": {INPUT_NAME: [None, *preprocess.input_shape]}, "outputs": outputs,
            },
            "classes": list(classes),
            "positive_class": positive_class,
            "recipes": list(recipes),
            "preprocess": preprocess.to_dict(),
            "decision": decision.to_dict(),
            "lineage": dict(lineage or {}),
            "evaluation": dict(evaluation or {}),
            "reference": ref_block,
            "parity": {"file": GOLDEN_FILE, "golden_source": golden.source, **parity_block},
            "files": files,
        }
        meta = _json_safe(meta)
        meta["integrity"] = integrity_block(meta)  # an edit of bundle.json after this is caught on load
        (tmp / BUNDLE_FILE).write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        load_bundle(tmp)  # the bundle must pass the edge's own checks before it is published
        return _publish(tmp, out, tar, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sign_bundle(bundle: str | Path, key: str | Path) -> dict[str, Any]:
    """Sign a bundle (folder or .tar.gz) with an ed25519 private key: writes ``bundle.sig.json`` into it.

    The bundle is verified first (hashes and integrity: one cannot sign a tampered bundle
    by accident); the signature covers its digest, hence every file. A folder gets the
    file atomically; an archive is rewritten to a temp name and renamed. Returns the
    signature document (digest, key id).
    """
    path = Path(bundle)
    b = load_bundle(path, check_model=False)
    doc = signature_document(b.digest, key)
    data = (json.dumps(doc, indent=2) + "\n").encode()
    if path.is_dir():
        storage.write_bytes(str(path / SIGNATURE_FILE), data)
        return doc
    tmp_tar = Path(storage.partial_name(str(path)))
    try:
        with tarfile.open(tmp_tar, "w:gz") as tf:
            for f in sorted(b.path.iterdir()):
                if f.name != SIGNATURE_FILE:
                    tf.add(f, arcname=f.name, recursive=False)
            info = tarfile.TarInfo(SIGNATURE_FILE)
            info.size, info.mode, info.mtime = len(data), 0o644, int(_dt.datetime.now(_dt.UTC).timestamp())
            tf.addfile(info, io.BytesIO(data))
        os.replace(tmp_tar, path)
    finally:
        tmp_tar.unlink(missing_ok=True)
    return doc


def verify_bundle(path: str | Path, threads: int = 1) -> dict[str, Any]:
    """Re-check a bundle: hashes, schema, the model loads, golden-batch parity in ONNX Runtime.

    The same check the edge runs (``lineguard.edge.predictor.verify_bundle``); raises
    BundleError on any failure.
    """
    from lineguard.edge.predictor import verify_bundle as _verify

    return _verify(path, threads=threads)


def rebundle(
    base: str | Path,
    out: str | Path,
    model_file: str | Path,
    precision: str,
    *,
    atol: float | None = None,
    evaluation: Mapping[str, Any] | None = None,
    decision: Decision | None = None,
    version: str | None = None,
    tar: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """A new bundle from an existing one with another ONNX model (e.g. an INT8 or pruned candidate).

    The new model's outputs on the base bundle's golden images (in ONNX Runtime) become
    the new expected outputs; its gap to the base model is recorded in ``parity``
    (reference ``base-bundle``). Classes, preprocessing, reference statistics and lineage
    are kept; ``evaluation`` and ``decision`` replace the base's when given.
    """
    b = load_bundle(base)
    g = b.load_arrays(GOLDEN_FILE)
    golden = GoldenBatch(g["images"], g["recipes"], g["labels"], str(b.meta.get("parity", {}).get("golden_source", "")))
    base_expected = {k[len("expected_"):]: v for k, v in g.items() if k.startswith("expected_")}
    actual = onnx_outputs(model_file, golden.inputs(b.preprocess))
    dec = decision if decision is not None else b.decision
    tol = float(atol if atol is not None else b.meta.get("parity", {}).get("atol", 1e-4))
    report = compare_outputs(base_expected, actual, dec.thresholds_for(golden.recipes), dec.temperature,
                             b.positive_index, tol, "base-bundle")
    ref = b.load_arrays(REFERENCE_FILE) if REFERENCE_FILE in b.meta["files"] else None
    reference = dict(b.meta.get("reference", {}))
    emb = actual.get("embedding")
    if ref is not None and emb is not None and "embedding_mean" in ref and ref["embedding_mean"].shape[-1] != emb.shape[1]:
        # The base's embedding reference describes another model (a pruned or distilled one has another
        # width): drop it rather than ship drift statistics that cannot be compared. Image statistics stay.
        ref = {k: v for k, v in ref.items() if not k.startswith("embedding_")}
        reference["embedding"] = {}
    lineage = {**b.meta.get("lineage", {}), "base_bundle": f"{b.name}:{b.version}",
               "base_model_sha256": b.meta["model"]["sha256"]}
    return write_bundle(
        out, model_file, classes=b.classes, positive_class=b.positive_class, preprocess=b.preprocess, golden=golden,
        expected=actual, parity=report, decision=dec, recipes=b.recipes, precision=precision,
        opset=b.meta["model"].get("opset"), lineage=lineage,
        evaluation=evaluation if evaluation is not None else b.meta.get("evaluation", {}),
        reference=reference, reference_arrays=ref,
        name=b.name, version=version or b.version, tar=tar, overwrite=overwrite,
    )


