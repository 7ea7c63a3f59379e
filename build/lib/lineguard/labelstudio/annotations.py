"""Annotations back in: a Label Studio JSON / JSON-MIN export -> labelled records and problems."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from lineguard import storage
from lineguard.labels import normalise_name
from lineguard.labelstudio.format import (
    DEFECT_TAG,
    LABEL_TAG_ALIASES,
    LABELS_CSV_COLUMNS,
    RECIPE_TAG,
    LabelStudioError,
    default_synonyms,
    label_reader,
)
from lineguard.labelstudio.urls import UnresolvableImage, resolve_image_url

# Problem kinds. All but the last two mean "this task gave no record".
PROBLEM_KINDS = {
    "unlabelled": "task has no annotation",
    "cancelled": "every annotation of the task was cancelled (skipped)",
    "no_label": "the chosen annotation picks no class",
    "ambiguous_label": "the chosen annotation picks more than one class",
    "unknown_label": "the chosen class is not a known class or synonym",
    "no_image": "task data has no image URL",
    "outside_root": "image URL points outside the root (refused)",
    "unresolvable": "image URL cannot be mapped to a file under the root",
    "missing_file": "image URL maps to a path under the root that is not a file",
    "duplicate": "another task labels the same file; the later annotation is kept",
    "disagreement": "annotators disagree; the ground-truth or latest annotation is kept",
}
KEPT_PROBLEM_KINDS = ("duplicate", "disagreement")


@dataclass(frozen=True)
class LabelRecord:
    """One labelled image from a Label Studio export.

    ``source_path`` is relative to the root given to :func:`parse_export` (POSIX
    separators); ``label`` is a class name after synonym normalisation; ``recipe`` and
    ``defect_type`` are snake_case ids or "" when not given.
    """

    task_id: str
    source_path: str
    label: str
    recipe: str
    defect_type: str
    annotator: str
    annotation_id: str
    updated_at: str
    image_id: str = ""
    image_url: str = ""


@dataclass(frozen=True)
class LabelProblem:
    """Why a task gave no record (or, for ``duplicate``/``disagreement``, a note on a kept one)."""

    task_id: str
    kind: str
    detail: str
    image_url: str = ""


class ParsedExport(NamedTuple):
    """What :func:`parse_export` returns: records and problems (unpacks as a 2-tuple)."""

    records: list[LabelRecord]
    problems: list[LabelProblem]


def _when(annotation: Mapping[str, Any]) -> datetime:
    for key in ("updated_at", "created_at"):
        value = annotation.get(key)
        if isinstance(value, str) and value:
            try:
                t = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return t if t.tzinfo else t.replace(tzinfo=UTC)
    return datetime.min.replace(tzinfo=UTC)


def _annotator(annotation: Mapping[str, Any]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        return str(who.get("email") or who.get("username") or who.get("id") or "")
    if annotation.get("created_username"):  # "First Last email@host, 2"
        name = str(annotation["created_username"]).rsplit(",", 1)[0].strip()
        email = re.search(r"\S+@\S+", name)
        return email.group(0) if email else name
    return "" if who is None else str(who)


def _choices(result: Any) -> dict[str, list[str]]:
    """``from_name -> chosen values`` for the choices in an annotation result."""
    out: dict[str, list[str]] = {}
    if not isinstance(result, list):
        return out
    for item in result:
        if not isinstance(item, Mapping):
            continue
        value = item.get("value")
        if isinstance(value, Mapping) and isinstance(value.get("choices"), list):
            out.setdefault(str(item.get("from_name", "")), []).extend(
                str(v)[:200] if isinstance(v, str | int | float) else "<not text>" for v in value["choices"]
            )
    return out


def _label_values(choices: Mapping[str, list[str]]) -> list[str] | None:
    for tag in LABEL_TAG_ALIASES:
        if tag in choices:
            return choices[tag]
    return None


def _from_json_min(rows: Sequence[Mapping[str, Any]], image_key: str) -> list[dict[str, Any]]:
    """JSON-MIN rows in the full task shape.

    JSON-MIN is flat: one row per *annotation* (``id`` is the task id, repeated when a
    task has several), choices as top-level keys, ``annotator``/``annotation_id`` null
    for a task nobody labelled. It leaves out cancelled annotations and the ground-truth
    flag, so the full JSON export is the better input.
    """
    meta_keys = {"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time"}
    tags = {*LABEL_TAG_ALIASES, RECIPE_TAG, DEFECT_TAG}
    tasks: dict[str, dict[str, Any]] = {}
    for n, row in enumerate(rows):
        task_id = str(row.get("id", f"#{n}"))
        task = tasks.setdefault(task_id, {"id": row.get("id", f"#{n}"), "data": {}, "annotations": []})
        task["data"].update({k: v for k, v in row.items() if k not in meta_keys and k not in tags})
        if row.get("recipe") not in (None, "") and "recipe" not in task["data"]:
            task["data"]["recipe"] = row["recipe"]  # the data field and the choice share the key
        result = []
        for tag in sorted(tags):
            value = row.get(tag)
            if value not in (None, ""):
                chosen = value.get("choices", []) if isinstance(value, Mapping) else [value]
                result.append(
                    {"from_name": tag, "to_name": image_key, "type": "choices", "value": {"choices": chosen}}
                )
        if row.get("annotation_id") is not None or any(
            row.get(t) not in (None, "") for t in LABEL_TAG_ALIASES
        ):
            task["annotations"].append(
                {
                    "id": row.get("annotation_id") if row.get("annotation_id") is not None else "",
                    "result": result,
                    "was_cancelled": False,
                    "ground_truth": False,
                    "completed_by": row.get("annotator", ""),
                    "created_at": row.get("created_at", ""),
                    "updated_at": row.get("updated_at", ""),
                }
            )
    return list(tasks.values())


MAX_EXPORT_BYTES = 200_000_000
MAX_EXPORT_DEPTH = 64


def _too_deep(value: Any, max_depth: int) -> bool:
    """True when JSON ``value`` nests deeper than ``max_depth`` (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        if isinstance(node, Mapping):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, Mapping | list))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, Mapping | list))
    return False


def _load_export(path_or_url: str, image_key: str, max_bytes: int, max_depth: int) -> list[dict[str, Any]]:
    try:
        text = storage.read_text(path_or_url, max_bytes)
    except storage.TooLargeError as exc:
        raise LabelStudioError(f"Label Studio export {exc} (ingest.max_table_bytes)") from None
    except storage.StorageError as exc:
        raise LabelStudioError(f"Label Studio export {exc}") from None
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelStudioError(
            f"'{path_or_url}' is not valid JSON ({exc}); expected a Label Studio JSON export"
        ) from None
    except RecursionError:  # nested past Python's own limit: certainly past ours
        tasks, too_deep = None, True
    else:
        too_deep = _too_deep(tasks, max_depth)
    if too_deep:
        raise LabelStudioError(
            f"'{path_or_url}' nests deeper than {max_depth} levels (ingest.max_json_depth); "
            "a Label Studio export is a list of flat tasks"
        )
    if isinstance(tasks, Mapping) and ("data" in tasks or "annotations" in tasks):
        tasks = [tasks]
    if not isinstance(tasks, list) or not all(isinstance(t, Mapping) for t in tasks):
        raise LabelStudioError(
            f"'{path_or_url}' is not a Label Studio JSON export: expected a list of tasks (export as 'JSON' or 'JSON-MIN')"
        )
    if tasks and not any("data" in t or "annotations" in t for t in tasks):
        return _from_json_min(tasks, image_key)
    return [dict(t) for t in tasks]


def parse_export(
    path_or_url: str,
    root: str,
    *,
    label_synonyms: Mapping[str, Sequence[str]] | None = None,
    positive_class: str = "bad",
    local_files_root: str | None = None,
    image_key: str = "image",
    max_bytes: int = MAX_EXPORT_BYTES,
    max_depth: int = MAX_EXPORT_DEPTH,
) -> ParsedExport:
    """Read a Label Studio JSON (or JSON-MIN) export into labelled records and problems.

    Stable signature (``lineguard.ingest`` calls it): ``parse_export(path_or_url, root)
    -> ParsedExport(records, problems)``, keyword options after that.

    Per task, the annotation used is the latest non-cancelled one, ground-truth
    annotations first. Its class goes through ``label_synonyms`` (default: ingest's
    good/bad synonyms); the recipe is the annotation's ``recipe`` choice, else the task's
    ``data.recipe``; the defect type is kept for the positive class only. The image URL
    is resolved by :func:`resolve_image_url` to a path relative to ``root``, and any URL
    pointing outside ``root`` is refused. Every task without a record appears in
    ``problems`` (see :data:`PROBLEM_KINDS`); ``duplicate`` and ``disagreement`` are
    notes on records that were kept.

    The export is untrusted: a file over ``max_bytes`` or nested deeper than
    ``max_depth`` is refused whole (:class:`LabelStudioError`); a task of the wrong shape
    is a problem of that task, never a crash.
    """
    synonyms = dict(label_synonyms or default_synonyms())
    read = label_reader(synonyms)
    tasks = _load_export(path_or_url, image_key, max_bytes, max_depth)
    records: dict[str, tuple[datetime, LabelRecord]] = {}
    problems: list[LabelProblem] = []
    for n, task in enumerate(tasks):
        task_id = str(task.get("id", f"#{n}"))
        raw_data = task.get("data")
        data: Mapping[str, Any] = raw_data if isinstance(raw_data, Mapping) else {}
        raw_url = data.get(image_key)
        url = raw_url if isinstance(raw_url, str) else ""
        raw_annotations = task.get("annotations")
        annotations = [a for a in raw_annotations if isinstance(a, Mapping)] if isinstance(raw_annotations, list) else []
        if not annotations:
            problems.append(LabelProblem(task_id, "unlabelled", PROBLEM_KINDS["unlabelled"], url))
            continue
        live = [a for a in annotations if not a.get("was_cancelled")]
        if not live:
            problems.append(LabelProblem(task_id, "cancelled", PROBLEM_KINDS["cancelled"], url))
            continue
        live.sort(key=lambda a: (bool(a.get("ground_truth")), _when(a), str(a.get("id", ""))))
        chosen = live[-1]
        choices = _choices(chosen.get("result"))
        values = _label_values(choices)
        if not values:
            problems.append(
                LabelProblem(task_id, "no_label", f"annotation {chosen.get('id')} picks no class", url)
            )
            continue
        if len(set(values)) > 1:
            problems.append(LabelProblem(task_id, "ambiguous_label", f"annotation picks {values}", url))
            continue
        label = read(values[0])
        if label is None:
            problems.append(
                LabelProblem(
                    task_id,
                    "unknown_label",
                    f"class '{values[0]}' is not one of {sorted(synonyms)} or their synonyms (ingest.label_synonyms)",
                    url,
                )
            )
            continue
        if not url:
            problems.append(LabelProblem(task_id, "no_image", f"task data has no '{image_key}' field", url))
            continue
        try:
            rel = resolve_image_url(url, root, local_files_root)
        except UnresolvableImage as exc:
            problems.append(LabelProblem(task_id, exc.kind, exc.detail, url))
            continue

        others = {read(v[0]) for a in live if (v := _label_values(_choices(a.get("result"))))}
        if len(others - {None}) > 1:
            problems.append(
                LabelProblem(
                    task_id,
                    "disagreement",
                    f"annotators chose {sorted(str(o) for o in others)}; kept '{label}' from annotation {chosen.get('id')}",
                    url,
                )
            )
        recipe_choice = choices.get(RECIPE_TAG) or []
        recipe = normalise_name(recipe_choice[0] if recipe_choice else str(data.get("recipe") or ""))
        defect = choices.get(DEFECT_TAG) or []
        defect_type = normalise_name(defect[0]) if defect and label == positive_class else ""
        record = LabelRecord(
            task_id=task_id,
            source_path=rel,
            label=label,
            recipe=recipe,
            defect_type=defect_type,
            annotator=_annotator(chosen),
            annotation_id=str(chosen.get("id", "")),
            updated_at=str(chosen.get("updated_at") or chosen.get("created_at") or ""),
            image_id=str(data.get("image_id") or ""),
            image_url=url,
        )
        when = _when(chosen)
        if rel in records:
            prev_when, prev = records[rel]
            keep = record if when >= prev_when else prev
            problems.append(
                LabelProblem(
                    task_id,
                    "duplicate",
                    f"tasks {prev.task_id} and {task_id} both label '{rel}'; kept task {keep.task_id} ('{keep.label}')",
                    url,
                )
            )
            if keep is prev:
                continue
        records[rel] = (when, record)
    return ParsedExport([r for _, r in records.values()], problems)


def labels_csv_text(records: Iterable[LabelRecord]) -> str:
    """The labels CSV (file,label,recipe,defect_type) that ``lineguard data ingest`` reads."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LABELS_CSV_COLUMNS)
    for r in sorted(records, key=lambda r: r.source_path):
        writer.writerow([r.source_path, r.label, r.recipe, r.defect_type])
    return buf.getvalue()


def import_export(
    export: str,
    out_csv: str,
    root: str,
    *,
    label_synonyms: Mapping[str, Sequence[str]] | None = None,
    positive_class: str = "bad",
    local_files_root: str | None = None,
) -> ParsedExport:
    """Turn a Label Studio JSON export into a labels CSV for ``lineguard data ingest`` (written atomically).

    Returns what :func:`parse_export` found, so the caller can report the problems.
    """
    parsed = parse_export(
        export,
        root,
        label_synonyms=label_synonyms,
        positive_class=positive_class,
        local_files_root=local_files_root,
    )
    storage.write_text(out_csv, labels_csv_text(parsed.records))
    return parsed
