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
``splits`` (grouped stratified splits, balanced test) and ``report``; with ``merge_with``,
``merge`` (the previous dataset version: its items and splits kept, SRC's relabels applied,
SRC's new items split around them).
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
from typing import TYPE_CHECKING, Any

from lineguard import storage
from lineguard.config import IngestConfig
from lineguard.ingest.hashing import decode_all, near_duplicate_groups, perceptual_hash, thumbnail
from lineguard.ingest.merge import (
    MergedImages,
    PreviousHashes,
    balance_new_test,
    check_classes,
    check_merge_paths,
    hash_previous,
    open_previous,
)
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

if TYPE_CHECKING:
    from lineguard.manifest import Dataset

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

    def __init__(self, budget_bytes: int = 1_000_000_000, folder: str | None = None) -> None:
        self._mem: dict[str, bytes] = {}
        self._disk: dict[str, str] = {}
        self._budget = budget_bytes
        self._used = 0
        self._folder = folder  # the ingest's private work folder (removed by the ingest), else a temp one
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def add(self, image_id: str, png: bytes) -> None:
        if image_id in self:
            return
        if self._used + len(png) <= self._budget:
            self._mem[image_id] = png
            self._used += len(png)
            return
        if self._folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lineguard-ingest-")
            self._folder = self._tmp.name
        os.makedirs(os.path.join(self._folder, "png"), exist_ok=True)
        path = os.path.join(self._folder, "png", image_id)
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
            self._folder = None


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
    user_split: str = ""
    recipe_defaulted: bool = False  # no rule gave a recipe: default_recipe (a merge keeps PREV's recipe then)


# Folder names (and CSV split values) that mean a split the user gave, lower-cased.
SPLIT_NAMES: dict[str, str] = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}
_SPLIT_PRIORITY = ("train", "val", "test")  # a leak is resolved in favour of the earlier split


def _check_out(src: str, out: str) -> None:
    """Refuse a dataset folder inside the source (a re-ingest would read its own output) or around it.

    ``--out`` holding the source would put the user's photos inside a folder that
    ``--overwrite`` replaces; both are refused before anything is read.
    """

    def norm(u: str) -> str:
        return os.path.realpath(storage.local_path(u)) if storage.is_local(u) else u.rstrip("/")

    s, o = norm(src), norm(out)
    if storage.is_local(src) != storage.is_local(out):
        return
    if o == s or o.startswith(s.rstrip("/") + "/"):
        raise IngestError(f"--out '{out}' is inside the source '{src}'; write the dataset somewhere else")
    if s.startswith(o.rstrip("/") + "/"):
        raise IngestError(f"the source '{src}' is inside --out '{out}'; write the dataset somewhere else")


def _split_rank(split: str) -> int:
    return _SPLIT_PRIORITY.index(split) if split in _SPLIT_PRIORITY else 0


def _split_folder(path: str) -> tuple[str, str]:
    """(user split, rest of the path) when the path starts with a split folder, else ("", path)."""
    head, _, rest = path.partition("/")
    split = SPLIT_NAMES.get(head.strip().lower(), "")
    return (split, rest) if split and rest else ("", path)


def _label(
    images: list[_Image], source: Any, tables: dict[str, list[dict[str, str]]], config: IngestConfig,
    class_folders: bool, split_folders: bool = False,
) -> tuple[list[_Image], dict[str, dict[str, Any]]]:
    """Label and recipe for every decoded image; returns (resolved images, conflicts by source path).

    With ``split_folders`` the leading train/val/test folder is the image's user split
    and is left out of the label and recipe rules.
    """
    rules = LabelRules(config)
    resolved: list[_Image] = []
    conflicts: dict[str, dict[str, Any]] = {}
    for img in images:
        vote_path = img.source_path
        if split_folders:
            img.user_split, vote_path = _split_folder(img.source_path)
        votes = path_votes(vote_path, rules, class_folders)
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
            img.recipe_defaulted = found is None
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
        # The copy kept is the one in the user's first split (train, val, test), then by path.
        copies = sorted(by_id[image_id], key=lambda i: (_split_rank(i.user_split), i.source_path.lower(), i.source_path))
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
    merge_with: str | None = None,
) -> IngestReport:
    """Ingest ``src`` (folder, archive, CSV, Label Studio export; path or URL) into a Dataset at ``out``.

    ``root`` is the folder the paths of a CSV or Label Studio source are relative to
    (default: the file's own folder). Re-ingesting the same source gives the same dataset
    version. An existing, different dataset at ``out`` is refused unless ``overwrite``,
    and even then only a folder that is a LineGuard dataset (and holds nothing else) is
    replaced; ``out`` inside the source, or the source inside ``out``, is refused.
    A split the source gives (train/val/test folders, a CSV split column) is kept
    (``ingest.user_split``). Raises :class:`IngestError` when the source cannot be read
    at all or yields no labelled image; per-file problems are in the returned
    :class:`IngestReport` (also saved in the dataset as report.json and report.md).
    Scratch (unpacked archive members, spilled PNGs) lives in one private temp folder,
    removed at the end or, after a ``kill -9``, by the next ingest.

    ``merge_with`` is the previous dataset version: the new dataset holds all of its items
    (their split kept) plus SRC's, SRC's label winning for an image both hold, and records
    PREV's version as its parent. PREV is only read. See docs/ingest.md, "Merging with the
    previous version".
    """
    config = config or IngestConfig()
    if seed is not None:
        config = config.model_copy(update={"seed": seed})
    import shutil

    _check_out(str(src), str(out))
    if merge_with is not None:
        check_merge_paths(str(out), str(merge_with))
    scratch = storage.work_dir("ingest")
    pngs = _PngStore(folder=scratch)
    try:
        return _run(str(src), str(out), config, overwrite, root, progress, pngs, scratch,
                    None if merge_with is None else str(merge_with))
    finally:
        pngs.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _user_splits_from_tables(
    images: list[_Image], tables: dict[str, list[dict[str, str]]], source: Any,
) -> list[_Image]:
    """Set ``user_split`` from a CSV split column; images the column leaves out or garbles are refused."""
    if not any(row.get("split", "").strip() for rows in tables.values() for row in rows):
        return images
    kept: list[_Image] = []
    for img in images:
        values = {row.get("split", "").strip().lower() for row in tables.get(img.source_path, [])} - {""}
        splits = {SPLIT_NAMES.get(v, "?" + v) for v in values}
        if not splits:
            source.reject(img.source_path, "no_split", "the labels CSV gives other files a split but not this one")
        elif len(splits) > 1 or any(x.startswith("?") for x in splits):
            source.reject(img.source_path, "bad_split", f"split {sorted(values)}; expected one of train, val, test")
        else:
            img.user_split = splits.pop()
            kept.append(img)
            continue
    return kept


def _apply_user_split(
    kept: list[_Image], resolved: list[_Image], group_of: dict[str, str], config: IngestConfig, report: IngestReport,
    require_train_test: bool = True,
) -> dict[str, str]:
    """The user's split per image id, with leaks across splits resolved and val carved from train if missing.

    An image whose copies sit in two splits keeps the first of train, val, test; a
    near-duplicate group spread over splits keeps its members of the first such split and
    moves the others to ``unused`` (a near copy of a train image in test measures memory,
    not generalisation). Both are reported. A split without val gets one from its train
    images, by group and seed, at the configured val share.
    """
    from lineguard.manifest import HOLDOUT

    copies: dict[str, set[str]] = defaultdict(set)
    paths: dict[str, list[str]] = defaultdict(list)
    for img in resolved:
        copies[img.image_id].add(img.user_split)
        paths[img.image_id].append(f"{img.user_split}: {img.source_path}")
    split_of: dict[str, str] = {}
    for img in kept:
        found = copies[img.image_id]
        split_of[img.image_id] = next(s for s in _SPLIT_PRIORITY if s in found)
        if len(found) > 1:
            report.split_leaks.append({
                "kind": "exact_duplicate", "kept_in": split_of[img.image_id], "files": sorted(paths[img.image_id]),
            })
    by_group: dict[str, list[_Image]] = defaultdict(list)
    for img in kept:
        by_group[group_of[img.image_id]].append(img)
    for gid, members in sorted(by_group.items()):
        splits = {split_of[m.image_id] for m in members}
        if len(splits) < 2:
            continue
        home = next(s for s in _SPLIT_PRIORITY if s in splits)
        moved = sorted(m.source_path for m in members if split_of[m.image_id] != home)
        for m in members:
            if split_of[m.image_id] != home:
                split_of[m.image_id] = HOLDOUT
        report.split_leaks.append({"kind": "near_duplicate", "group_id": gid, "kept_in": home, "moved_to_unused": moved})
    if report.split_leaks:
        report.warnings.append(
            f"the source's own split leaks: {len(report.split_leaks)} image(s) or near-duplicate group(s) in more "
            "than one split; kept in the first of train/val/test, other copies left out (see 'Split leaks')"
        )
    counts = Counter(split_of.values())
    for needed in ("train", "test") if require_train_test else ():
        if not counts.get(needed):
            raise IngestError(
                f"the split given by '{report.source}' has no {needed} images (train {counts.get('train', 0)}, "
                f"val {counts.get('val', 0)}, test {counts.get('test', 0)}); a user split needs train and test "
                "images -- or set ingest.user_split=ignore to split by seed"
            )
    if not counts.get("val") and counts.get("train"):
        train_groups: dict[str, tuple[str, int]] = {}
        for gid, members in by_group.items():
            inside = [m for m in members if split_of[m.image_id] == "train"]
            if inside:
                strata = Counter(f"{m.recipe}/{m.label}" for m in inside)
                train_groups[gid] = (min(strata, key=lambda x: (-strata[x], x)), len(inside))
        share = {"train": config.split["train"], "val": config.split["val"], "test": 0.0}
        carved = assign_splits(train_groups, share, config.seed) if share["val"] > 0 else {}
        for img in kept:
            if split_of[img.image_id] == "train" and carved.get(group_of[img.image_id]) == "val":
                split_of[img.image_id] = "val"
        report.warnings.append(
            f"the source gives no val split: {sum(v == 'val' for v in split_of.values())} of its train images "
            "became val (by group and seed, ingest.split shares); its test split is kept as given"
        )
    return split_of


def _merge_previous(
    kept: list[_Image], resolved: list[_Image], previous: Dataset, hashes: PreviousHashes, config: IngestConfig,
    report: IngestReport, user_split: bool,
) -> tuple[Any, list[_Image], dict[str, str], dict[str, str]]:
    """SRC's images against PREV's: (PREV's rows, relabels applied; SRC's new images; their groups; their splits).

    An image both hold (same pixels) keeps its PREV row and split; SRC's label, recipe and
    defect type win where they differ (a relabel) and the row's ``label_source`` becomes
    SRC's. A value SRC does not give is no change: a recipe only from ``default_recipe``,
    an empty defect type on an unchanged label. A new image that is a near duplicate of
    PREV items joins their split and group (or ``unused`` when those items sit in two
    splits); the others are grouped and split by the usual rules, among themselves.
    """
    from lineguard.manifest import HOLDOUT, SPLITS

    prev_df = previous.manifest.copy()
    first = prev_df.drop_duplicates("image_id").set_index("image_id")
    merge: dict[str, Any] = {"relabelled": [], "already_present": [], "near_duplicates_of_previous": []}
    new: list[_Image] = []
    for img in kept:
        pid = hashes.canonical.get(img.image_id)
        if pid is None:
            new.append(img)
            continue
        row = first.loc[pid]
        old = {"label": str(row["label"]), "recipe": str(row["recipe"]), "defect_type": str(row["defect_type"])}
        defect = img.defect_type if (img.defect_type or img.label != old["label"]) else old["defect_type"]
        given = {"label": img.label, "recipe": old["recipe"] if img.recipe_defaulted else img.recipe,
                 "defect_type": "" if img.label == "good" else defect}
        entry = {"image_id": pid, "source_path": img.source_path, "previous_source_path": str(row["source_path"]),
                 "split": str(row["split"])}
        if given == old:
            merge["already_present"].append(entry)
            continue
        at = prev_df["image_id"] == pid
        for col, value in (*given.items(), ("label_source", img.label_source)):
            prev_df.loc[at, col] = value
        merge["relabelled"].append({**entry, "old": old, "new": given})

    # Near duplicates across both: PREV's images first, then SRC's new ones.
    import numpy as np

    group_of: dict[str, str] = {}
    split_of: dict[str, str] = {}
    free: list[_Image] = []
    free_groups: dict[str, tuple[str, int]] = {}
    if new:
        prev_ids = list(hashes.phash)
        roots = near_duplicate_groups(
            [hashes.phash[i] for i in prev_ids] + [i.phash for i in new], config.near_duplicate_bits,
            np.stack([hashes.thumb[i] for i in prev_ids] + [i.thumb for i in new]), config.near_duplicate_max_diff,
        )
        members: dict[int, tuple[list[str], list[_Image]]] = defaultdict(lambda: ([], []))
        for k, r in enumerate(roots):
            if k < len(prev_ids):
                members[r][0].append(prev_ids[k])
            else:
                members[r][1].append(new[k - len(prev_ids)])
        for root_index in sorted(members):
            prevs, news = members[root_index]
            if not news:
                continue
            homes = [s for s in SPLITS if s in {str(first.loc[p, "split"]) for p in prevs}]
            if not homes:  # no PREV item, or only PREV items out of every split: split as usual
                gid = min(i.image_id for i in news)[:16]
                strata = Counter(f"{i.recipe}/{i.label}" for i in news)
                free_groups[gid] = (min(strata, key=lambda x: (-strata[x], x)), len(news))
                for i in news:
                    group_of[i.image_id] = gid
                free.extend(news)
                if len(news) > 1:
                    report.near_duplicate_groups.append(sorted(i.source_path for i in news))
                continue
            home = homes[0] if len(homes) == 1 else HOLDOUT
            near = sorted(p for p in prevs if str(first.loc[p, "split"]) in homes)
            gid = min(str(first.loc[p, "group_id"]) for p in near)
            near_labels = sorted({str(first.loc[p, "label"]) for p in near})
            for i in news:
                group_of[i.image_id], split_of[i.image_id] = gid, home
                merge["near_duplicates_of_previous"].append({
                    "source_path": i.source_path, "split": home, "label": i.label,
                    "previous_source_paths": sorted(str(first.loc[p, "source_path"]) for p in near),
                    "previous_labels": near_labels,
                })
                if near_labels != [i.label]:
                    # A near copy labelled otherwise: the definition of a defect may have moved (concept
                    # drift), and PREV's item keeps its old label unless SRC relabels that very image.
                    report.warnings.append(
                        f"new image '{i.source_path}' ({i.label}) is a near duplicate of previous item(s) labelled "
                        f"{', '.join(near_labels)}; relabel those too if the definition changed"
                    )
            if home == HOLDOUT:
                report.warnings.append(
                    f"{len(news)} new image(s) are near duplicates of previous items in {' and '.join(homes)}; "
                    "left out of every split (unused) so neither split leaks"
                )
        report.near_duplicate_groups.sort()

    if free and user_split:
        free_ids = {i.image_id for i in free}
        split_of.update(_apply_user_split(free, [r for r in resolved if r.image_id in free_ids], group_of, config,
                                          report, require_train_test=False))
    elif free:
        split_of_group = assign_splits(free_groups, config.split, config.seed)
        split_of.update({i.image_id: split_of_group[group_of[i.image_id]] for i in free})
    if config.balance_test and not user_split and new:
        test_rows = prev_df[prev_df["split"] == "test"].drop_duplicates("image_id")
        items = [(str(r.image_id), str(r.recipe), str(r.label), False) for r in test_rows.itertuples()]
        items += [(i.image_id, i.recipe, i.label, True) for i in new if split_of[i.image_id] == "test"]
        moved, warnings = balance_new_test(items, config.seed, HOLDOUT, split_of)
        path_of = {i.image_id: i.source_path for i in new}
        report.unused = sorted(path_of[m] for m in moved)
        report.warnings.extend(warnings)
    for entries in merge.values():
        entries.sort(key=lambda e: e["source_path"])
    report.merge = merge
    return prev_df, new, group_of, split_of


def _merge_summary(report: IngestReport, prev_df: Any, new: list[_Image], split_of: dict[str, str]) -> None:
    """Counts of the merge per split (``report.merge['per_split']``) and in total."""
    per_split: dict[str, Counter[str]] = defaultdict(Counter)
    for split in prev_df.drop_duplicates("image_id")["split"]:
        per_split[str(split)]["previous"] += 1
    for img in new:
        per_split[split_of[img.image_id]]["new"] += 1
    for kind in ("relabelled", "already_present", "near_duplicates_of_previous"):
        for entry in report.merge[kind]:
            per_split[entry["split"]][kind] += 1
    report.merge["per_split"] = {s: dict(sorted(c.items())) for s, c in sorted(per_split.items())}
    report.merge["from_previous"] = int(prev_df["image_id"].nunique())
    report.merge["new_items"] = len(new)


def _run(
    src: str, out: str, config: IngestConfig, overwrite: bool, root: str | None, progress: bool, pngs: _PngStore,
    scratch: str, merge_with: str | None = None,
) -> IngestReport:
    import pandas as pd

    from lineguard import __version__
    from lineguard.manifest import HOLDOUT, image_relpath, manifest_version, write_dataset

    started = time.perf_counter()
    report = IngestReport(source=src, out=out)
    previous = open_previous(merge_with, config) if merge_with is not None else None

    # 1. What is there, and what the label tables say.
    source, kind = open_source(src, config, root, scratch)
    tables = label_tables(source, kind, LabelRules(config))
    kind = kind.split(":", 1)[0]
    entries = source.entries
    split_folders = (
        config.user_split == "auto" and kind in ("folder", "archive") and len(entries) > 0
        and all(_split_folder(e.source_path)[0] for e in entries)
    )
    vote_paths = [_split_folder(e.source_path)[1] if split_folders else e.source_path for e in entries]
    class_folders = config.layout == "class_folders" or (
        config.layout == "auto" and not source.tables and kind in ("folder", "archive")
        and len(entries) > 0 and all(p.count("/") == 1 for p in vote_paths)
        and len({p.split("/")[0] for p in vote_paths}) >= 2
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
    csv_split = False
    if config.user_split == "auto" and not split_folders:
        before = len(images)
        images = _user_splits_from_tables(images, tables, source)
        csv_split = any(i.user_split for i in images) or len(images) < before
    user_split = split_folders or csv_split
    report.split_source = ("folders" if split_folders else "csv") if user_split else "seed"

    # 3. Labels and recipes; exact duplicates collapse into one row.
    resolved, conflicts = _label(images, source, tables, config, class_folders, split_folders)
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

    # 4. Near-duplicate groups, then the user's split (checked for leaks) or grouped stratified splits;
    # merging, PREV's items keep their split and SRC's new ones are split around them.
    prev_rows: list[dict[str, Any]] = []
    if previous is not None:
        check_classes(previous, {i.label for i in kept}, src)
        hashes = hash_previous(previous, config)
        prev_df, kept, group_of, split_of = _merge_previous(kept, resolved, previous, hashes, config, report,
                                                            user_split)
        _merge_summary(report, prev_df, kept, split_of)
        report.merge.update({"previous": merge_with, "previous_version": previous.version})
        prev_rows = prev_df.to_dict("records")
    elif user_split:
        group_of, groups = _group(kept, config, report)
        split_of = _apply_user_split(kept, resolved, group_of, config, report)
    else:
        group_of, groups = _group(kept, config, report)
        split_of_group = assign_splits(groups, config.split, config.seed)
        split_of = {i.image_id: split_of_group[group_of[i.image_id]] for i in kept}
    if config.balance_test and not user_split and previous is None:
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
    rows = prev_rows + rows
    df = pd.DataFrame(rows)
    report.version = manifest_version(df)
    report.images = len(rows)
    if previous is not None and report.version == previous.version:
        raise IngestError(
            f"'{src}' adds nothing to '{merge_with}': every image is already there with the same labels, so the "
            f"merge would be version {previous.version} again; keep using '{merge_with}'"
        )
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
    image_bytes: Mapping[str, bytes] = pngs
    if previous is not None:
        # Lineage: the parent version, and every ancestor's version oldest first.
        meta["parent"] = {"version": previous.version, "dataset": merge_with}
        meta["lineage"] = [*previous.meta.get("lineage", []), previous.version]
        image_bytes = MergedImages(pngs, previous)
    extra_files = {
        "report.json": json.dumps(report.to_dict(), indent=2, sort_keys=True).encode(),
        "report.md": report.to_markdown().encode(),
    }
    write_dataset(out, df, image_bytes, extra_files, meta, overwrite=overwrite)
    return report
