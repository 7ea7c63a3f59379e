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
import shutil
import uuid
from collections.abc import Iterable, Mapping
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


def encode_png(image: np.ndarray) -> bytes:
    """Deterministic PNG bytes for an HxWx3 uint8 image (same pixels -> same bytes -> same id)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


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
    for image_id in df["image_id"]:
        if image_id not in images:
            raise DatasetError(f"manifest row {image_id} has no image bytes")
    for image_id, png in images.items():
        if image_id_of(png) != image_id:
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
    files: dict[str, bytes] = {image_relpath(i): images[i] for i in df["image_id"]}
    files.update(dict(extra_files or {}))
    files[META_FILE] = json.dumps(meta_out, indent=2, sort_keys=True).encode()

    if storage.is_local(out):
        target = os.path.abspath(storage.local_path(out))
        parent = os.path.dirname(target)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(target)}.{uuid.uuid4().hex}.partial")
        try:
            for rel, data in files.items():
                dest = os.path.join(tmp, rel)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with open(dest, "wb") as f:
                    f.write(data)
            with open(os.path.join(tmp, MANIFEST_FILE), "wb") as f:
                f.write(manifest_buf.getvalue())
            if os.path.exists(target):
                # Replace an existing folder (overwrite, or an empty/non-dataset folder we own):
                # move it aside first so the new dataset appears in one rename.
                if os.listdir(target) and not overwrite and not os.path.exists(os.path.join(target, MANIFEST_FILE)):
                    raise DatasetError(f"'{out}' exists and is not empty; choose a new --out folder")
                aside = f"{tmp}.old"
                os.replace(target, aside)
                os.replace(tmp, target)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        for rel, data in files.items():
            storage.write_bytes(storage.join(out, rel), data)
        storage.write_bytes(storage.join(out, MANIFEST_FILE), manifest_buf.getvalue())
    return load_dataset(out)
