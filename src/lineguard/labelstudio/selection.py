"""A selection of a station's frames (``lineguard monitor select``) written as Label Studio tasks.

:func:`write_selection` takes what :func:`lineguard.monitor.select.select_for_labelling` chose and writes,
under one folder::

    images/<recipe or 'unknown'>/<station>-<prediction id>.png   the PNG the station stored
    tasks.json, labelling-config.xml                             through :func:`export_tasks` (folder source:
                                                                 the recipe is the first folder's name)
    selection.csv                                                one row per pick: where it came from, why

Each task is pre-annotated with the champion's decision and the confidence of that decision from the
store -- no model is run, so this works where the station's training stack is absent -- and its data
carries the frame's ``prediction_id``, ``key``, ``station`` and reasons, so a label traces back to the
decision it confirms or corrects. The labelled export comes back with ``lineguard label import``
(:func:`import_export`, ``--root <out>/images``) as the labels CSV ``lineguard data ingest`` reads.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lineguard import storage
from lineguard.labels import normalise_name
from lineguard.labelstudio.format import (
    CONFIG_FILENAME,
    DEFECT_TYPES,
    LabelStudioError,
    default_synonyms,
    label_reader,
)
from lineguard.labelstudio.tasks import export_tasks

if TYPE_CHECKING:  # the selection itself comes from lineguard.monitor (imported when writing one)
    from lineguard.monitor.select import Pick, Selection

__all__ = ["SELECTION_COLUMNS", "SelectionFiles", "write_selection"]

SELECTION_COLUMNS = (
    "prediction_id",
    "key",
    "frame_id",
    "recipe",
    "time",
    "score",
    "decision",
    "threshold",
    "bundle_version",
    "reasons",
    "priority",
    "feedback_label",
    "image",
)
TASKS_FILENAME = "tasks.json"
CSV_FILENAME = "selection.csv"
IMAGES_DIR = "images"
UNKNOWN_RECIPE = "unknown"
_PLAIN = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SelectionFiles:
    """What :func:`write_selection` wrote (paths are absolute)."""

    out_dir: str
    images_dir: str
    tasks_path: str
    config_path: str
    csv_path: str
    tasks: int
    recipes: list[str]
    notes: list[str] = field(default_factory=list)


def recipe_folder(recipe: str | None) -> str:
    """The images/ sub-folder of a recipe: its snake_case id (what Label Studio and ingest read back), else 'unknown'."""
    return normalise_name(recipe or "") or UNKNOWN_RECIPE


def image_name(pick: Pick) -> str:
    """``<station>-<prediction id>.png`` (the station's name made plain: it comes from the store)."""
    station = _PLAIN.sub("_", pick.station).strip("._") or "station"
    return f"{station}-{pick.prediction_id}.png"


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise LabelStudioError(f"--out {out} is a file; expected a folder for the selection")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise LabelStudioError(
                f"--out {out} is not empty; choose an empty folder or pass --overwrite to "
                "replace a selection written there"
            )
        # Only what a selection writes is replaced; anything else in the folder stays.
        if (out / IMAGES_DIR).is_dir():
            shutil.rmtree(out / IMAGES_DIR)
        for name in (TASKS_FILENAME, CONFIG_FILENAME, CSV_FILENAME):
            if (out / name).is_file():
                (out / name).unlink()
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)


def write_selection(
    selection: Selection,
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    local_files_root: str | None = None,
    label_synonyms: Mapping[str, Sequence[str]] | None = None,
    positive_class: str = "bad",
    defect_types: Sequence[str] = DEFECT_TYPES,
) -> SelectionFiles:
    """Write the picks' images, Label Studio tasks and labelling config, and ``selection.csv`` (module docstring).

    ``out_dir`` must be empty or absent (``overwrite`` replaces a selection written there before).
    ``local_files_root``: Label Studio's ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` when it is not
    ``<out_dir>/images``. ``label_synonyms``, ``positive_class`` and ``defect_types``: the classes offered
    (ingest's, as ``lineguard label export``). A pick whose image the store no longer holds (retention
    since the selection) is left out with a note.
    """
    from lineguard.monitor.report import read_images

    out = Path(out_dir).resolve()
    if not selection.picks:
        raise LabelStudioError("the selection is empty: nothing to write")
    _prepare(out, overwrite)
    images_dir = out / IMAGES_DIR
    notes: list[str] = []
    pngs = read_images(selection.store_path, [p.prediction_id for p in selection.picks])
    read = label_reader(dict(label_synonyms or default_synonyms()))
    by_rel: dict[str, Pick] = {}
    by_digest: dict[str, tuple[str, float]] = {}
    warned: set[str] = set()
    for pick in selection.picks:
        png = pngs.get(pick.prediction_id)
        if png is None:
            notes.append(f"prediction {pick.prediction_id}: the store no longer holds its image; left out")
            continue
        folder = recipe_folder(pick.recipe)
        if read(folder) is not None and folder not in warned:
            warned.add(folder)
            notes.append(
                f"recipe folder '{folder}' reads as a label word: Label Studio tasks get no recipe for it "
                "and ingest would read the folder as a label; give the recipe another name"
            )
        rel = f"{folder}/{image_name(pick)}"
        (images_dir / folder).mkdir(exist_ok=True)
        (images_dir / rel).write_bytes(png)
        by_rel[rel] = pick
        # The champion's decision and its confidence (as bundle_predictor gives Label Studio).
        confidence = pick.score if pick.decision == "reject" else 1.0 - pick.score
        by_digest.setdefault(hashlib.sha256(png).hexdigest(), (pick.label, confidence))

    def from_store(data: bytes, _recipe: str) -> tuple[str, float]:
        return by_digest[hashlib.sha256(data).hexdigest()]

    versions = sorted({p.bundle_version for p in by_rel.values()})
    summary = export_tasks(
        str(images_dir),
        str(out / TASKS_FILENAME),
        local_files_root=local_files_root,
        predict=from_store,
        model_version="+".join(versions) or "lineguard",
        label_synonyms=label_synonyms,
        positive_class=positive_class,
        recipes=sorted({recipe_folder(p.recipe) for p in by_rel.values()}),
        defect_types=defect_types,
    )
    notes += summary.notes

    # Trace each task to its decision: the store's ids, the version that decided, why it was picked.
    tasks = json.loads(storage.read_text(summary.tasks_path))
    for task in tasks:
        pick = by_rel[task["data"]["source_path"]]
        task["data"].update(
            {
                "prediction_id": pick.prediction_id,
                "key": pick.key,
                "station": pick.station,
                "frame_id": pick.frame_id,
                "bundle_version": pick.bundle_version,
                "reasons": ";".join(pick.reasons),
                "feedback_label": pick.feedback_label,
            }
        )
        for p in task.get("predictions", []):
            p["model_version"] = pick.bundle_version or p.get("model_version", "")
    storage.write_text(summary.tasks_path, json.dumps(tasks, indent=2, ensure_ascii=False) + "\n")

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SELECTION_COLUMNS)
    rel_of = {p.prediction_id: rel for rel, p in by_rel.items()}
    for pick in selection.picks:
        written = rel_of.get(pick.prediction_id)
        if written is None:
            continue
        writer.writerow(
            [
                pick.prediction_id,
                pick.key,
                pick.frame_id,
                pick.recipe or "",
                repr(pick.time),
                f"{pick.score:.6f}",
                pick.decision,
                f"{pick.threshold:.6f}",
                pick.bundle_version,
                ";".join(pick.reasons),
                f"{pick.priority:.4f}",
                pick.feedback_label,
                f"{IMAGES_DIR}/{written}",
            ]
        )
    storage.write_text(str(out / CSV_FILENAME), buf.getvalue())
    return SelectionFiles(
        out_dir=str(out),
        images_dir=str(images_dir),
        tasks_path=summary.tasks_path,
        config_path=summary.config_path,
        csv_path=str(out / CSV_FILENAME),
        tasks=len(tasks),
        recipes=summary.recipes,
        notes=notes,
    )
