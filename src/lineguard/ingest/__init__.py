"""Messy photos in, a clean versioned Dataset out: ``ingest(src, out, config) -> IngestReport``.

A source is a folder, an archive (.zip, .tar, .tar.gz), a CSV of paths and labels, a
Label Studio JSON export or a plain class-per-folder tree, as a local path or any fsspec
URL. Every file is decoded and verified with :func:`lineguard.preprocess.decode_image`
(corrupt, truncated, empty, non-image and oversized files are rejected with a reason),
normalised to 8-bit RGB and stored content-addressed as PNG. Labels and recipes come from
explicit rules (folder and file-name tokens matched against ``label_synonyms``, CSV
columns); two sources that disagree make a *conflict*, which is reported and held out,
never silently decided. Exact duplicates collapse into one row; near duplicates
(perceptual hash within ``near_duplicate_bits``) share a ``group_id`` so a group never
straddles splits. Nothing outside SRC is read: unsafe paths in CSVs and archives and
symlinks leaving SRC are refused per file, and the rest of the ingest goes on.

The parts, in the order ingest runs them: ``sources`` (what files there are),
``hashing`` (decode, verify, hash, near duplicates), ``rules`` (labels and recipes),
``splits`` (grouped stratified splits, balanced test) and ``report``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lineguard import storage
from lineguard.config import IngestConfig
from lineguard.ingest.hashing import decode_all, near_duplicate_groups, perceptual_hash, thumbnail
from lineguard.ingest.report import IngestReport, print_report
from lineguard.ingest.rules import (
    LabelRules,
    normalise_name,
    path_votes,
    recipe_from_filename,
    resolve,
    safe_relpath,
)
from lineguard.ingest.sources import IngestError, label_tables, open_source
from lineguard.ingest.splits import assign_splits, balance_test

__all__ = [
    "IngestError",
    "IngestReport",
    "LabelRules",
    "assign_splits",
    "ingest",
    "near_duplicate_groups",
    "normalise_name",
    "perceptual_hash",
    "print_report",
    "safe_relpath",
    "thumbnail",
]


class _PngStore(Mapping[str, bytes]):
    """image id -> PNG bytes; in memory up to ``budget_bytes``, then in a temporary folder.

    A few thousand full-size inspection photos do not fit in memory as PNGs; the spill
    folder is private to this ingest and removed by :meth:`close`.
    """

    def __init__(self, budget_bytes: int = 1_000_000_000) -> None:
        self._mem: dict[str, bytes] = {}
        self._disk: dict[str, str] = {}
        self._budget = budget_bytes
        self._used = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def add(self, image_id: str, png: bytes) -> None:
        if image_id in self:
            return
        if self._used + len(png) <= self._budget:
            self._mem[image_id] = png
            self._used += len(png)
            return
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lineguard-ingest-")
        path = os.path.join(self._tmp.name, image_id)
        with open(path, "wb") as f:
            f.write(png)
        self._disk[image_id] = path

    def __getitem__(self, image_id: str) -> bytes:
        if image_id in self._mem:
            return self._mem[image_id]
        with open(self._disk[image_id], "rb") as f:
            return f.read()

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._mem or image_id in self._disk

    def __iter__(self) -> Iterator[str]:
        yield from self._mem
        yield from self._disk

    def __len__(self) -> int:
        return len(self._mem) + len(self._disk)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


@dataclass
class _Image:
    source_path: str
    image_id: str
    width: int
    height: int
    phash: int
    thumb: Any = None
    label: str = ""
    recipe: str = ""
    defect_type: str = ""
    label_source: str = ""


def _check_out(src: str, out: str) -> None:
    """Refuse a dataset folder inside the source (a re-ingest would read its own output)."""

    def norm(u: str) -> str:
        return os.path.realpath(storage.local_path(u)) if storage.is_local(u) else u.rstrip("/")

    s, o = norm(src), norm(out)
    if storage.is_local(src) != storage.is_local(out):
        return
    if o == s or o.startswith(s.rstrip("/") + "/"):
        raise IngestError(f"--out '{out}' is inside the source '{src}'; write the dataset somewhere else")


def _label(
    images: list[_Image], source: Any, tables: dict[str, list[dict[str, str]]], config: IngestConfig,
    class_folders: bool,
) -> tuple[list[_Image], dict[str, dict[str, Any]]]:
    """Label and recipe for every decoded image; returns (resolved images, conflicts by source path)."""
    rules = LabelRules(config)
    resolved: list[_Image] = []
    conflicts: dict[str, dict[str, Any]] = {}
    for img in images:
        votes = path_votes(img.source_path, rules, class_folders)
        extra = source.extra_votes.get(img.source_path)
        if extra is not None:
            votes.label.update(extra.label)
            votes.recipe.update(extra.recipe)
            votes.defect = extra.defect or votes.defect
        label, recipe, defect, label_source, conflict = resolve(
            img.source_path, votes, tables.get(img.source_path, []), rules, config
        )
        if conflict is not None:
            conflicts[img.source_path] = conflict
            continue
        img.label, img.recipe, img.label_source, img.defect_type = label or "", recipe or "", label_source, defect
        resolved.append(img)
    known_recipes = sorted({i.recipe for i in resolved if i.recipe})
    for img in resolved:
        if not img.recipe:
            found = recipe_from_filename(img.source_path, known_recipes) if "filename" in config.recipe_from else None
            img.recipe = found or normalise_name(config.default_recipe) or "default"
    return resolved, conflicts


def _collapse_duplicates(
    images: list[_Image], resolved: list[_Image], conflicts: dict[str, dict[str, Any]], report: IngestReport
) -> list[_Image]:
    """One row per image id. Copies that disagree (or one copy in conflict) hold the image out."""
    by_id: dict[str, list[_Image]] = defaultdict(list)
    conflict_ids = {i.image_id for i in images if i.source_path in conflicts}
    for img in resolved:
        by_id[img.image_id].append(img)
    kept: list[_Image] = []
    for image_id in sorted(by_id):
        copies = sorted(by_id[image_id], key=lambda i: (i.source_path.lower(), i.source_path))
        labelled = [c for c in copies if c.label]
        if image_id in conflict_ids or len({(c.label, c.recipe) for c in labelled}) > 1:
            seen = sorted({f"{x.label}/{x.recipe}" for x in labelled})
            for c in copies:
                conflicts.setdefault(c.source_path, {
                    "source_path": c.source_path, "field": "duplicate",
                    "values": {"copies": seen, "copy_in_conflict": image_id in conflict_ids},
                })
            continue
        if not labelled:
            report.unlabelled.extend(c.source_path for c in copies)
            continue
        keep = labelled[0]
        keep.defect_type = keep.defect_type or next((c.defect_type for c in labelled if c.defect_type), "")
        if len(copies) > 1:
            report.duplicates_exact.append(
                {"kept": keep.source_path, "copies": [c.source_path for c in copies if c is not keep]}
            )
        kept.append(keep)
    return kept


def _group(
    kept: list[_Image], config: IngestConfig, report: IngestReport
) -> tuple[dict[str, str], dict[str, tuple[str, int]]]:
    """Near-duplicate groups: (image id -> group id, group id -> (majority stratum, size))."""
    import numpy as np

    thumbs = np.stack([i.thumb for i in kept])
    roots = near_duplicate_groups(
        [i.phash for i in kept], config.near_duplicate_bits, thumbs, config.near_duplicate_max_diff
    )
    members: dict[int, list[_Image]] = defaultdict(list)
    for img, r in zip(kept, roots, strict=True):
        members[r].append(img)
    group_of: dict[str, str] = {}
    groups: dict[str, tuple[str, int]] = {}
    for imgs in members.values():
        gid = min(i.image_id for i in imgs)[:16]
        strata = Counter(f"{i.recipe}/{i.label}" for i in imgs)
        groups[gid] = (min(strata, key=lambda s: (-strata[s], s)), len(imgs))
        for i in imgs:
            group_of[i.image_id] = gid
        if len(imgs) > 1:
            report.near_duplicate_groups.append(sorted(i.source_path for i in imgs))
            labels = sorted({i.label for i in imgs})
            if len(labels) > 1:
                report.warnings.append(
                    f"near-duplicate group {gid} mixes classes ({', '.join(labels)}); kept together in one split"
                )
    report.near_duplicate_groups.sort()
    return group_of, groups


def ingest(
    src: str,
    out: str,
    config: IngestConfig | None = None,
    *,
    overwrite: bool = False,
    seed: int | None = None,
    root: str | None = None,
    progress: bool = False,
) -> IngestReport:
    """Ingest ``src`` (folder, archive, CSV, Label Studio export; path or URL) into a Dataset at ``out``.

    ``root`` is the folder the paths of a CSV or Label Studio source are relative to
    (default: the file's own folder). Re-ingesting the same source gives the same dataset
    version. An existing, different dataset at ``out`` is refused unless ``overwrite``.
    Raises :class:`IngestError` when the source cannot be read at all or yields no
    labelled image; per-file problems are in the returned :class:`IngestReport` (also
    saved in the dataset as report.json and report.md).
    """
    config = config or IngestConfig()
    if seed is not None:
        config = config.model_copy(update={"seed": seed})
    pngs = _PngStore()
    try:
        return _run(str(src), str(out), config, overwrite, root, progress, pngs)
    finally:
        pngs.close()


def _run(
    src: str, out: str, config: IngestConfig, overwrite: bool, root: str | None, progress: bool, pngs: _PngStore
) -> IngestReport:
    import pandas as pd

    from lineguard import __version__
    from lineguard.manifest import HOLDOUT, image_relpath, manifest_version, write_dataset

    started = time.perf_counter()
    _check_out(src, out)
    report = IngestReport(source=src, out=out)

    # 1. What is there, and what the label tables say.
    source, kind = open_source(src, config, root)
    tables = label_tables(source, kind, LabelRules(config))
    kind = kind.split(":", 1)[0]
    entries = source.entries
    class_folders = config.layout == "class_folders" or (
        config.layout == "auto" and not source.tables and kind in ("folder", "archive")
        and len(entries) > 0 and all(e.source_path.count("/") == 1 for e in entries)
        and len({e.source_path.split("/")[0] for e in entries}) >= 2
    )
    report.layout = "class_folders" if class_folders else ("labelstudio" if kind == "labelstudio" else "rules")
    report.files_seen = len(entries) + len(source.rejected) + len(source.tables)

    # 2. Decode, verify, normalise, hash.
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
            task = bar.add_task("files", total=len(entries))
            decoded = decode_all(entries, config, source, lambda n: bar.advance(task, n))
    else:
        decoded = decode_all(entries, config, source, lambda n: None)
    images: list[_Image] = []
    for entry, result in decoded:
        if result[0] == "error":
            source.reject(entry.source_path, result[1], result[2])
            continue
        _, image_id, png, width, height, phash, thumb = result
        pngs.add(image_id, png)
        images.append(_Image(entry.source_path, image_id, width, height, phash, thumb))

    # 3. Labels and recipes; exact duplicates collapse into one row.
    resolved, conflicts = _label(images, source, tables, config, class_folders)
    report.unlabelled.extend(source.unlabelled)
    report.warnings.extend(source.notes)
    kept = _collapse_duplicates(images, resolved, conflicts, report)
    for img in kept:
        if img.label == "good":
            img.defect_type = ""
    if not kept:
        raise IngestError(
            f"no labelled image found in '{src}' ({len(images)} decodable, {len(conflicts)} conflicts, "
            f"{len(report.unlabelled)} unlabelled); see docs/ingest.md for how labels are found"
        )

    # 4. Near-duplicate groups, grouped stratified splits, balanced test.
    group_of, groups = _group(kept, config, report)
    split_of_group = assign_splits(groups, config.split, config.seed)
    split_of = {i.image_id: split_of_group[group_of[i.image_id]] for i in kept}
    if config.balance_test:
        moved, warnings = balance_test([(i.image_id, i.recipe, i.label) for i in kept], split_of, config.seed, HOLDOUT)
        path_of = {i.image_id: i.source_path for i in kept}
        report.unused = sorted(path_of[m] for m in moved)
        report.warnings.extend(warnings)

    # 5. The manifest, the report, the dataset (written atomically).
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows: list[dict[str, Any]] = [
        {
            "image_id": i.image_id, "path": image_relpath(i.image_id), "label": i.label, "recipe": i.recipe,
            "defect_type": i.defect_type, "split": split_of[i.image_id], "group_id": group_of[i.image_id],
            "source_path": i.source_path, "label_source": i.label_source, "width": i.width,
            "height": i.height, "ingested_at": now,
        }
        for i in kept
    ]
    df = pd.DataFrame(rows)
    report.version = manifest_version(df)
    report.images = len(kept)
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        counts[row["split"]][f"{row['recipe']}/{row['label']}"] += 1
    report.counts = {s: dict(sorted(c.items())) for s, c in sorted(counts.items())}
    report.rejected = sorted(source.rejected, key=lambda r: r["source_path"])
    report.conflicts = sorted(conflicts.values(), key=lambda c: c["source_path"])
    report.unlabelled.sort()
    report.duplicates_exact.sort(key=lambda d: d["kept"])
    report.skipped_hidden = source.hidden
    report.seconds = round(time.perf_counter() - started, 3)
    meta = {
        "source": src, "created_by": f"lineguard {__version__} ingest", "positive_class": config.positive_class,
        "ingest": config.model_dump(mode="json"), "ingested_at": now,
    }
    extra_files = {
        "report.json": json.dumps(report.to_dict(), indent=2, sort_keys=True).encode(),
        "report.md": report.to_markdown().encode(),
    }
    write_dataset(out, df, pngs, extra_files, meta, overwrite=overwrite)
    return report
