"""The dataset record: one manifest row per image, content-addressed files, a version hash.

A Dataset is a folder (or fsspec URL) holding ``manifest.parquet`` and images stored
under ``images/ab/abcdef….png`` where ``abcdef…`` is the sha256 of the PNG file. It is
immutable: any change makes a new version, and the version id is the hash of the
manifest's sorted content (``ingested_at`` excluded, so re-ingesting the same source
gives the same version). ``dataset.json`` carries the schema and version.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lineguard import LineguardError, storage
from lineguard.preprocess import decode_image

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.parquet"
META_FILE = "dataset.json"
SPLITS = ("train", "val", "test")
# Split value for images kept in the dataset but out of every split (e.g. the majority
# class downsampled out of the balanced test set): recorded, never trained or tested on.
HOLDOUT = "unused"

COLUMNS: dict[str, str] = {
    "image_id": "sha256 of the stored PNG file",
    "path": "relative, content-addressed: images/ab/abcdef….png",
    "label": "class name (good/bad or the dataset's own classes)",
    "recipe": "product recipe the image belongs to",
    "defect_type": "kind of defect; empty for the good class",
    "split": "train, val, test or unused",
    "group_id": "near-duplicate group; a group never straddles splits",
    "source_path": "where it came from, relative to the source root",
    "label_source": "folder, filename, csv, labelstudio or feedback",
    "width": "stored image width in pixels",
    "height": "stored image height in pixels",
    "ingested_at": "UTC ISO time of ingest (not part of the version hash)",
}
_STR_COLUMNS = [c for c in COLUMNS if c not in ("width", "height")]
_VERSION_EXCLUDED = ("ingested_at",)


class DatasetError(LineguardError):
    """A dataset is missing, malformed or inconsistent."""


def image_relpath(image_id: str) -> str:
    """Content-addressed relative path of an image."""
    return f"images/{image_id[:2]}/{image_id}.png"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def encode_png(image: np.ndarray) -> bytes:
    """Deterministic PNG bytes for an HxWx3 uint8 image (same pixels -> same bytes -> same id).

    Written directly (8-bit RGB, the PNG "Up" filter on every row, zlib level 1): about
    2.5x faster than Pillow's encoder at the same file size, and ingest encodes every
    image once (TARGETS P6). Any PNG reader decodes it.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DatasetError(f"encode_png expects an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    h, w, _ = image.shape
    rows = np.ascontiguousarray(image).reshape(h, w * 3)
    filtered = np.empty((h, w * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type Up: each byte minus the byte above it, mod 256
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), 1))
        + _png_chunk(b"IEND", b"")
    )


def image_id_of(png: bytes) -> str:
    return hashlib.sha256(png).hexdigest()


def normalise_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """Column order, dtypes and row order fixed, so equal content gives an equal hash."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"manifest is missing columns: {', '.join(missing)}")
    out = df[list(COLUMNS)].copy()
    for col in _STR_COLUMNS:
        out[col] = out[col].fillna("").astype(str)
    for col in ("width", "height"):
        out[col] = out[col].astype("int64")
    return out.sort_values(["image_id", "source_path"], kind="mergesort").reset_index(drop=True)


def manifest_version(df: pd.DataFrame) -> str:
    """The dataset version: sha256 over the sorted manifest content, ``ingested_at`` left out."""
    norm = normalise_manifest(df).drop(columns=list(_VERSION_EXCLUDED))
    payload = norm.to_csv(index=False, lineterminator="\n").encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:16]


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: its URL, manifest, version and metadata. Images are read lazily."""

    root: str
    manifest: pd.DataFrame
    version: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        """Class names, the positive (defect) class last, so index 1 is 'bad' in the default layout."""
        positive = self.meta.get("positive_class", "bad")
        names = sorted(set(self.manifest["label"]))
        if positive in names:
            names.remove(positive)
            names.append(positive)
        return names

    @property
    def positive_class(self) -> str:
        return str(self.meta.get("positive_class", "bad"))

    @property
    def recipes(self) -> list[str]:
        return sorted(set(self.manifest["recipe"]))

    def split(self, name: str) -> pd.DataFrame:
        """Rows of one split (train, val, test), in manifest order."""
        if name not in (*SPLITS, HOLDOUT):
            raise DatasetError(f"unknown split '{name}'; expected one of {', '.join(SPLITS)}")
        return self.manifest[self.manifest["split"] == name].reset_index(drop=True)

    def image_url(self, relpath: str) -> str:
        return storage.join(self.root, relpath)

    def read_image(self, relpath: str) -> np.ndarray:
        """Decode one stored image (HxWx3 uint8 RGB)."""
        return decode_image(storage.read_bytes(self.image_url(relpath)))

    def read_images(self, rows: pd.DataFrame, progress: bool = False) -> list[np.ndarray]:
        """Decode the images of some manifest rows, in order."""
        paths = list(rows["path"])
        if not progress:
            return [self.read_image(p) for p in paths]
        from rich.progress import track

        return [self.read_image(p) for p in track(paths, description="Decoding images")]


def load_dataset(url: str) -> Dataset:
    """Open a dataset folder or URL; raises :class:`DatasetError` with what is wrong."""
    url = str(url)
    manifest_url = storage.join(url, MANIFEST_FILE)
    csv_url = storage.join(url, "manifest.csv")
    try:
        if storage.exists(manifest_url):
            df = pd.read_parquet(io.BytesIO(storage.read_bytes(manifest_url)))
        elif storage.exists(csv_url):
            df = pd.read_csv(io.BytesIO(storage.read_bytes(csv_url)), dtype=str, keep_default_na=False)
        elif storage.exists(url):
            raise DatasetError(
                f"'{url}' is not a LineGuard dataset (no {MANIFEST_FILE}); "
                f"make one with: lineguard data ingest SRC --out {url}"
            )
        else:
            raise DatasetError(f"dataset '{url}' does not exist; make one with: lineguard data ingest SRC --out DATASET")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read the manifest of '{url}': {exc}") from None
    df = normalise_manifest(df)
    meta: dict[str, Any] = {}
    meta_url = storage.join(url, META_FILE)
    if storage.exists(meta_url):
        try:
            meta = json.loads(storage.read_text(meta_url))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"'{meta_url}' is not valid JSON: {exc}") from None
        if int(meta.get("schema", SCHEMA_VERSION)) > SCHEMA_VERSION:
            raise DatasetError(f"dataset schema {meta['schema']} is newer than this LineGuard ({SCHEMA_VERSION}); upgrade")
    version = manifest_version(df)
    if meta.get("version") and meta["version"] != version:
        raise DatasetError(
            f"dataset '{url}' was modified after it was written: manifest hash {version} "
            f"!= recorded version {meta['version']}; datasets are immutable, re-ingest instead"
        )
    return Dataset(root=url, manifest=df, version=version, meta=meta)


def write_dataset(
    out: str,
    rows: pd.DataFrame | Iterable[Mapping[str, Any]],
    images: Mapping[str, bytes],
    extra_files: Mapping[str, bytes] | None = None,
    meta: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Dataset:
    """Write a complete dataset atomically and return it loaded.

    ``images`` maps image_id -> PNG bytes (each must hash to its id). ``extra_files``
    (e.g. ``report.json``) are written beside the manifest. Locally, everything goes to
    a temp folder that is renamed into place, so an interrupted write leaves no half
    dataset. On object stores, images go first and the manifest last: a dataset without
    a manifest is not a dataset. An existing, different dataset at ``out`` is refused
    unless ``overwrite``; the same version already there is left as it is.
    """
    df = normalise_manifest(pd.DataFrame(list(rows)) if not isinstance(rows, pd.DataFrame) else rows)
    image_ids = list(dict.fromkeys(df["image_id"]))
    for image_id in image_ids:
        if image_id not in images:
            raise DatasetError(f"manifest row {image_id} has no image bytes")
    for image_id in image_ids:  # one image in memory at a time: ``images`` may be backed by files
        if image_id_of(images[image_id]) != image_id:
            raise DatasetError(f"image bytes do not hash to their id {image_id}")
    version = manifest_version(df)
    meta_out = {"schema": SCHEMA_VERSION, "version": version, "positive_class": "bad", **(meta or {})}
    meta_out["version"] = version
    meta_out["schema"] = SCHEMA_VERSION

    if storage.exists(storage.join(out, MANIFEST_FILE)):
        try:
            existing = load_dataset(out)
        except DatasetError:
            existing = None
        if existing is not None and existing.version == version:
            return existing
        if not overwrite:
            old = existing.version if existing is not None else "unreadable"
            raise DatasetError(
                f"'{out}' already holds dataset version {old}; datasets are immutable - "
                f"choose a new --out folder (or pass --overwrite to replace it)"
            )

    manifest_buf = io.BytesIO()
    df.to_parquet(manifest_buf, index=False)
    small: dict[str, bytes] = dict(extra_files or {})
    small[META_FILE] = json.dumps(meta_out, indent=2, sort_keys=True).encode()

    def files() -> Iterator[tuple[str, bytes]]:
        for image_id in image_ids:
            yield image_relpath(image_id), images[image_id]
        yield from small.items()

    if storage.is_local(out):
        target = os.path.abspath(storage.local_path(out))
        parent = os.path.dirname(target)
        os.makedirs(parent, exist_ok=True)
        storage.remove_stale(target)  # what a killed write left behind
        _check_replaceable(target, out, set(small))
        tmp = storage.partial_name(target)
        try:
            for rel, data in files():
                dest = os.path.join(tmp, rel)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with open(dest, "wb") as f:
                    f.write(data)
            with open(os.path.join(tmp, MANIFEST_FILE), "wb") as f:
                f.write(manifest_buf.getvalue())
            if os.path.exists(target):
                # Replace a folder checked above (empty, or a LineGuard dataset and nothing else):
                # move it aside first so the new dataset appears in one rename.
                _check_replaceable(target, out, set(small))
                aside = storage.partial_name(target, "old")
                os.replace(target, aside)
                os.replace(tmp, target)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        _check_replaceable_remote(out)
        for rel, data in files():
            storage.write_bytes(storage.join(out, rel), data)
        storage.write_bytes(storage.join(out, MANIFEST_FILE), manifest_buf.getvalue())
    return load_dataset(out)


_DATASET_FILES = {MANIFEST_FILE, "manifest.csv", META_FILE, "report.json", "report.md", "images"}
_IMAGE_NAME = re.compile(r"[0-9a-f]{64}\.png")


def _not_ours(target: str, extra_names: set[str]) -> str | None:
    """The first path in ``target`` that a LineGuard dataset would not hold, or None.

    A dataset folder holds its manifest, dataset.json, the reports and ``images/ab/<sha256>.png``;
    anything else there is the user's, and a folder holding it is never replaced.
    """
    allowed = _DATASET_FILES | extra_names
    for entry in sorted(os.listdir(target)):
        full = os.path.join(target, entry)
        if entry not in allowed or os.path.islink(full):
            return entry
        if entry == "images":
            if not os.path.isdir(full):
                return entry
            for sub in sorted(os.listdir(full)):
                sub_full = os.path.join(full, sub)
                if len(sub) != 2 or os.path.islink(sub_full) or not os.path.isdir(sub_full):
                    return f"images/{sub}"
                for name in os.listdir(sub_full):
                    if not _IMAGE_NAME.fullmatch(name) or not name.startswith(sub):
                        return f"images/{sub}/{name}"
        elif os.path.isdir(full):
            return entry
    return None


def _check_replaceable(target: str, out: str, extra_names: set[str]) -> None:
    """Refuse to replace ``target`` unless it is missing, empty, or a LineGuard dataset and nothing else.

    ``--overwrite`` means "replace the dataset that is there", never "delete whatever
    folder this is": a folder of photos, or a dataset a user put their own files into,
    is refused with the first file that is not LineGuard's.
    """
    if os.path.islink(target):
        raise DatasetError(f"'{out}' is a symbolic link; give the real folder as --out")
    if not os.path.exists(target):
        return
    if not os.path.isdir(target):
        raise DatasetError(f"'{out}' exists and is not a folder; choose a new --out folder")
    if not os.listdir(target):
        return
    if not (os.path.isfile(os.path.join(target, META_FILE)) and os.path.isfile(os.path.join(target, MANIFEST_FILE))):
        raise DatasetError(
            f"'{out}' exists and is not a LineGuard dataset (no {MANIFEST_FILE} and {META_FILE}); LineGuard only "
            "replaces its own datasets -- choose a new --out folder"
        )
    stranger = _not_ours(target, extra_names)
    if stranger is not None:
        raise DatasetError(
            f"'{out}' holds '{stranger}', which LineGuard did not write; refusing to replace the folder -- "
            "move that file out or choose a new --out folder"
        )


def _check_replaceable_remote(out: str) -> None:
    """On an object store nothing is deleted, but a prefix holding other objects is still refused."""
    fs, path = storage.filesystem(out)
    try:
        names = [str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)] if fs.exists(path) else []
    except Exception:  # a missing prefix on some backends
        names = []
    if names and MANIFEST_FILE not in names:
        raise DatasetError(
            f"'{out}' holds objects and is not a LineGuard dataset (no {MANIFEST_FILE}); choose a new --out prefix"
        )


# --- checks and summaries (``lineguard data validate`` / ``lineguard data info``) -------------------

LABEL_SOURCES = ("folder", "filename", "csv", "labelstudio", "feedback")


@dataclass(frozen=True)
class Check:
    """One dataset check: ``status`` is ok, warn (a soft issue) or fail."""

    name: str
    status: str
    detail: str


@dataclass
class ValidationReport:
    """All checks of one dataset; ``ok`` is False when any check failed."""

    dataset: str
    version: str = ""
    checks: list[Check] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warn"]

    def add(self, name: str, problems: list[str], ok_detail: str, status_if_problem: str = "fail") -> None:
        if problems:
            more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
            self.checks.append(Check(name, status_if_problem, "; ".join(problems[:5]) + more))
        else:
            self.checks.append(Check(name, "ok", ok_detail))

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "version": self.version, "ok": self.ok,
                "checks": [c.__dict__ for c in self.checks], "stats": self.stats}


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG header, or None when the bytes are not a PNG."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _size_stats(df: pd.DataFrame) -> dict[str, Any]:
    if df.empty:
        return {}
    w, h = df["width"].to_numpy(), df["height"].to_numpy()
    return {
        "width": {"min": int(w.min()), "median": float(np.median(w)), "max": int(w.max())},
        "height": {"min": int(h.min()), "median": float(np.median(h)), "max": int(h.max())},
        "distinct_sizes": len(set(zip(w.tolist(), h.tolist(), strict=True))),
    }


def validate(url: str, check_files: bool = True, progress: bool = False) -> ValidationReport:
    """Check a dataset: schema, files present and matching their sha256 ids, class balance,
    per-recipe coverage, split leakage (no image or near-duplicate group in two splits),
    test balance per recipe, image sizes. Fails are hard errors, warnings soft issues.
    """
    report = ValidationReport(dataset=str(url))
    try:
        ds = load_dataset(url)
    except DatasetError as exc:
        report.checks.append(Check("schema", "fail", str(exc)))
        return report
    df, report.version = ds.manifest, ds.version
    splits = (*SPLITS, HOLDOUT)

    problems = []
    bad_split = sorted(set(df["split"]) - set(splits))
    if bad_split:
        problems.append(f"unknown split values {bad_split}; expected {', '.join(splits)}")
    wrong_path = df[df["path"] != df["image_id"].map(image_relpath)]
    if len(wrong_path):
        problems.append(f"{len(wrong_path)} rows whose path is not images/<id[:2]>/<id>.png, e.g. {wrong_path['path'].iloc[0]}")
    for col in ("label", "recipe", "image_id", "group_id"):
        if (df[col].str.strip() == "").any():
            problems.append(f"{int((df[col].str.strip() == '').sum())} rows with an empty {col}")
    if ((df["width"] <= 0) | (df["height"] <= 0)).any():
        problems.append("rows with a width or height <= 0")
    report.add("schema", problems, f"{len(df)} rows, {len(COLUMNS)} columns, version {ds.version}")
    unknown_sources = sorted(set(df["label_source"]) - set(LABEL_SOURCES) - {""})
    report.add("label sources", [f"unknown label_source values {unknown_sources}"] if unknown_sources else [],
               ", ".join(f"{k}: {v}" for k, v in sorted(Counter(df["label_source"]).items())), "warn")

    if check_files:
        problems = []
        paths = list(df.drop_duplicates("image_id")[["image_id", "path", "width", "height"]].itertuples(index=False))
        if progress:
            from rich.progress import track

            paths = list(track(paths, description="Checking images"))
        for image_id, path, width, height in paths:
            try:
                data = storage.read_bytes(storage.join(ds.root, path))
            except storage.StorageError:
                problems.append(f"missing {path}")
                continue
            if image_id_of(data) != image_id:
                problems.append(f"{path} does not hash to its id (changed after ingest)")
            elif _png_size(data) != (int(width), int(height)):
                problems.append(f"{path} is {_png_size(data)}, manifest says {(int(width), int(height))}")
        report.add("files", problems, f"{len(paths)} images present, sha256 matches every id")

    in_splits = df[df["split"].isin(SPLITS)]
    problems = []
    for col, what in (("image_id", "images"), ("group_id", "near-duplicate groups")):
        spread = in_splits.groupby(col)["split"].nunique()
        leaked = spread[spread > 1]
        if len(leaked):
            problems.append(f"{len(leaked)} {what} in more than one split, e.g. {leaked.index[0]}")
    report.add("split leakage", problems, "no image and no near-duplicate group in two splits")

    counts = Counter(df["split"])
    problems = [f"the {s} split is empty" for s in ("train", "test") if not counts.get(s)]
    report.add("splits", problems, ", ".join(f"{s}: {counts.get(s, 0)}" for s in splits))
    if counts.get("train") and not counts.get("val"):
        report.checks.append(Check("val split", "warn", "the val split is empty"))

    used = df[df["split"] != HOLDOUT]
    per_class = Counter(used["label"])
    if len(per_class) < 2:
        report.checks.append(Check("class balance", "fail", f"only one class: {dict(per_class)}"))
    else:
        ratio = min(per_class.values()) / max(per_class.values())
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(per_class.items())) + f" (minority/majority {ratio:.2f})"
        status = "warn" if ratio < 0.2 or ds.positive_class not in per_class else "ok"
        if ds.positive_class not in per_class:
            detail += f"; positive class '{ds.positive_class}' has no image"
        report.checks.append(Check("class balance", status, detail))

    classes = sorted(per_class)
    problems = []
    for recipe, rows in used.groupby("recipe"):
        for split in ("train", "test"):
            missing = sorted(set(classes) - set(rows.loc[rows["split"] == split, "label"]))
            if missing:
                problems.append(f"{recipe}: no {', '.join(missing)} in {split}")
    report.add("recipe coverage", problems, f"{df['recipe'].nunique()} recipes, every class in train and test",
               "warn")

    problems = []
    test = df[df["split"] == "test"]
    for recipe, rows in test.groupby("recipe"):
        n = Counter(rows["label"])
        if len(set(n.values())) > 1:
            problems.append(f"{recipe}: " + ", ".join(f"{k} {v}" for k, v in sorted(n.items())))
    report.add("test balance", problems, "test split balanced between classes in every recipe", "warn")

    report.stats = {"sizes": _size_stats(df), "images": len(df), "splits": dict(counts),
                    "classes": dict(per_class), "recipes": dict(Counter(used["recipe"]))}
    sizes = report.stats["sizes"]
    small = int(((df["width"] < 32) | (df["height"] < 32)).sum())
    detail = (f"width {sizes['width']['min']}-{sizes['width']['max']} (median {sizes['width']['median']:g}), "
              f"height {sizes['height']['min']}-{sizes['height']['max']} (median {sizes['height']['median']:g}), "
              f"{sizes['distinct_sizes']} distinct sizes") if sizes else "no images"
    report.add("image sizes", [f"{small} images smaller than 32 px; {detail}"] if small else [], detail, "warn")
    return report


def info(url: str) -> dict[str, Any]:
    """A dataset at a glance: version, source, counts per split / recipe / class, image sizes."""
    ds = load_dataset(url)
    df = ds.manifest
    table = (
        df.groupby(["recipe", "label", "split"]).size().unstack("split", fill_value=0)
        .reindex(columns=[s for s in (*SPLITS, HOLDOUT)], fill_value=0)
    )
    return {
        "dataset": ds.root,
        "version": ds.version,
        "source": ds.meta.get("source", ""),
        "created_by": ds.meta.get("created_by", ""),
        "parent": ds.meta.get("parent", {}),  # the previous version this one was merged from (ingest --merge-with)
        "ingested_at": ds.meta.get("ingested_at", df["ingested_at"].max() if len(df) else ""),
        "images": len(df),
        "classes": ds.classes,
        "positive_class": ds.positive_class,
        "recipes": ds.recipes,
        "splits": {s: int((df["split"] == s).sum()) for s in (*SPLITS, HOLDOUT)},
        "table": [
            {"recipe": r, "label": lab, **{s: int(v) for s, v in row.items()}}
            for (r, lab), row in table.iterrows()
        ],
        "sizes": _size_stats(df),
    }
