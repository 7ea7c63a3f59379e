"""Tasks out: a Label Studio tasks file and labelling config for a dataset or a folder of images."""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lineguard import storage
from lineguard.labels import normalise_name
from lineguard.labelstudio.format import (
    CONFIG_FILENAME,
    DEFECT_TYPES,
    IMAGE_EXTENSIONS,
    LABEL_TAG,
    LOCAL_FILES_PATH,
    RECIPE_TAG,
    LabelStudioError,
    default_synonyms,
    label_reader,
    labelling_config,
)


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_tasks` wrote."""

    tasks_path: str
    config_path: str
    tasks: int
    classes: list[str]
    recipes: list[str]
    skipped: int = 0
    with_predictions: int = 0
    notes: list[str] = field(default_factory=list)


def _has_label_in_path(relpath: str, read: Callable[[str], str | None]) -> bool:
    """True when a folder or file name of the path holds a label synonym (ingest's rule)."""
    parts = relpath.split("/")
    parts[-1] = os.path.splitext(parts[-1])[0]
    return any(read(p) is not None for p in parts)


def _recipe_from_path(relpath: str, read: Callable[[str], str | None]) -> str:
    parts = relpath.split("/")
    if len(parts) < 2 or read(parts[0]) is not None:
        return ""
    return normalise_name(parts[0])


def _labelled_in_csv(csv_url: str) -> set[str]:
    """Files a labels CSV already labels (any header spelling of file/label; '\\' as '/')."""
    text = storage.read_text(csv_url)
    reader = csv.DictReader(io.StringIO(text))
    cols = {normalise_name(c or ""): c for c in reader.fieldnames or []}
    file_col, label_col = cols.get("file") or cols.get("path"), cols.get("label")
    if file_col is None or label_col is None:
        raise LabelStudioError(f"'{csv_url}' needs 'file' and 'label' columns, found: {list(cols.values())}")
    return {
        row[file_col].strip().replace("\\", "/")
        for row in reader
        if (row.get(label_col) or "").strip() and (row.get(file_col) or "").strip()
    }


def _local_files_url(abs_path: str, local_files_root: str) -> str:
    from urllib.parse import quote

    rel = os.path.relpath(abs_path, local_files_root).replace(os.sep, "/")
    if rel == ".." or rel.startswith("../") or os.path.isabs(rel):
        raise LabelStudioError(f"'{abs_path}' is not under the local-files root '{local_files_root}'")
    return f"{LOCAL_FILES_PATH}?d={quote(rel, safe='/')}"


def _prediction(label: str, score: float, recipe: str, model_version: str) -> dict[str, Any]:
    result: list[dict[str, Any]] = [
        {"from_name": LABEL_TAG, "to_name": "image", "type": "choices", "value": {"choices": [label]}}
    ]
    if recipe:
        result.append(
            {"from_name": RECIPE_TAG, "to_name": "image", "type": "choices", "value": {"choices": [recipe]}}
        )
    return {"model_version": model_version, "score": round(float(score), 6), "result": result}


Predictor = Callable[[bytes, str], tuple[str, float]]
"""``predict(image_bytes, recipe) -> (class name, score of that decision)`` for pre-annotations."""


def bundle_predictor(bundle: str) -> tuple[Predictor, str]:
    """A :data:`Predictor` over a LineGuard bundle (needs the edge runtime), and its model version.

    The score given to Label Studio is the confidence of the decision shown.
    """
    from lineguard.edge.predictor import Predictor as BundlePredictor
    from lineguard.preprocess import decode_image

    runner = BundlePredictor(bundle)

    def predict(data: bytes, recipe: str) -> tuple[str, float]:
        p = runner.predict(decode_image(data), recipe or None)
        assert not isinstance(p, list)
        return p.label, (p.score if p.rejected else 1.0 - p.score)

    return predict, f"{runner.bundle.name}:{runner.bundle.version}"


def default_root(export: str) -> str:
    """The folder an export file lies in: the root its image paths are resolved against by default."""
    export = str(export)
    if storage.is_local(export):
        return os.path.dirname(os.path.abspath(storage.local_path(export)))
    return posixpath.dirname(export)


def export_tasks(
    source: str,
    out: str,
    *,
    local_files_root: str | None = None,
    only_unlabelled: bool = False,
    predict: Predictor | None = None,
    model_version: str = "lineguard",
    labels_csv: str | None = None,
    label_synonyms: Mapping[str, Sequence[str]] | None = None,
    positive_class: str = "bad",
    recipes: Sequence[str] = (),
    defect_types: Sequence[str] = DEFECT_TYPES,
) -> ExportSummary:
    """Write Label Studio tasks for a dataset or a folder of images, and the labelling config beside them.

    ``source`` is a LineGuard dataset (tasks for its images, with their recipe, image id
    and dataset version) or a folder (tasks for the image files in it; hidden files
    skipped). Local images get ``/data/local-files/?d=<path relative to
    local_files_root>`` URLs (default root: ``source`` itself); images in an object
    store keep their ``s3://`` URL for a Label Studio cloud source storage.
    ``only_unlabelled`` keeps folder files with no label in their path (and not in
    ``labels_csv``). ``predict`` adds pre-annotations. ``recipes`` and ``defect_types``
    are offered as choices (recipes found in the source are added). ``out`` is the tasks JSON file;
    the config goes to ``labelling-config.xml`` in the same folder.
    """
    from lineguard.manifest import MANIFEST_FILE, load_dataset

    synonyms = dict(label_synonyms or default_synonyms())
    source = str(source).rstrip("/") or "/"
    local = storage.is_local(source)
    if local:
        src_path = os.path.realpath(storage.local_path(source))
        if not os.path.isdir(src_path):
            raise LabelStudioError(
                f"'{source}' is not a folder or dataset; expected a dataset or a folder of images"
            )
        lf_root = os.path.realpath(local_files_root) if local_files_root else src_path
        if os.path.commonpath([src_path, lf_root]) != lf_root:
            raise LabelStudioError(
                f"'{source}' is not under --local-files-root '{local_files_root}'; Label Studio only serves "
                "files below its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
            )
    elif local_files_root:
        raise LabelStudioError(
            "--local-files-root applies to local folders only; for object stores connect the bucket as "
            "a Label Studio cloud storage"
        )
    else:
        src_path, lf_root = source, ""

    def image_url(rel: str) -> str:
        if local:
            return _local_files_url(os.path.realpath(os.path.join(src_path, rel)), lf_root)
        return storage.join(source, rel)

    is_dataset = storage.exists(storage.join(source, MANIFEST_FILE)) or storage.exists(
        storage.join(source, "manifest.csv")
    )
    tasks: list[dict[str, Any]] = []
    notes: list[str] = []
    skipped = 0
    if is_dataset:
        if only_unlabelled:
            raise LabelStudioError(
                f"'{source}' is a dataset: every image in it is labelled. --only-unlabelled applies to "
                "folders of raw images"
            )
        ds = load_dataset(source)
        classes = ds.classes
        positive_class = ds.positive_class
        found_recipes = ds.recipes
        for row in ds.manifest.itertuples(index=False):
            data = {
                "image": image_url(str(row.path)),
                "image_id": str(row.image_id),
                "recipe": str(row.recipe),
                "source_path": str(row.source_path),
                "dataset_label": str(row.label),
                "dataset_defect_type": str(row.defect_type),
                "split": str(row.split),
                "dataset_version": ds.version,
            }
            tasks.append({"data": data, "_rel": str(row.path)})
    else:
        if not storage.exists(source):
            raise LabelStudioError(f"'{source}' does not exist; expected a dataset or a folder of images")
        known = _labelled_in_csv(labels_csv) if labels_csv else set()
        read = label_reader(synonyms)
        classes = [c for c in synonyms if c != positive_class] + (
            [positive_class] if positive_class in synonyms else []
        )
        found = set()
        for rel in storage.walk_files(source):
            if any(p.startswith(".") for p in rel.split("/")) or not rel.lower().endswith(IMAGE_EXTENSIONS):
                continue
            if only_unlabelled and (rel in known or _has_label_in_path(rel, read)):
                skipped += 1
                continue
            try:
                url = image_url(rel)
            except LabelStudioError:
                notes.append(f"skipped '{rel}': it links outside the local-files root")
                skipped += 1
                continue
            recipe = _recipe_from_path(rel, read)
            if recipe:
                found.add(recipe)
            data = {
                "image": url,
                "image_id": "",
                "recipe": recipe,
                "source_path": rel,
                "dataset_version": "",
            }
            tasks.append({"data": data, "_rel": rel})
        found_recipes = sorted(found)
    all_recipes = list(dict.fromkeys([*recipes, *found_recipes]))

    with_predictions = 0
    if predict is not None:
        from rich.progress import track

        for task in track(tasks, description="Pre-annotating"):
            label, score = predict(
                storage.read_bytes(storage.join(source, task["_rel"])), task["data"]["recipe"]
            )
            task["predictions"] = [_prediction(label, score, task["data"]["recipe"], model_version)]
            with_predictions += 1
    for task in tasks:
        del task["_rel"]
    if not tasks:
        notes.append("no images to label: the tasks file is empty")

    out = str(out)
    if storage.is_local(out):
        config_path = os.path.join(os.path.dirname(os.path.abspath(storage.local_path(out))), CONFIG_FILENAME)
    else:
        config_path = storage.join(posixpath.dirname(out), CONFIG_FILENAME)
    storage.write_text(out, json.dumps(tasks, indent=2, ensure_ascii=False) + "\n")
    storage.write_text(config_path, labelling_config(classes, all_recipes, defect_types, positive_class))
    return ExportSummary(
        tasks_path=out,
        config_path=config_path,
        tasks=len(tasks),
        classes=list(classes),
        recipes=all_recipes,
        skipped=skipped,
        with_predictions=with_predictions,
        notes=notes,
    )
