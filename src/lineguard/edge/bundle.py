"""Load and verify a bundle -- the only thing the edge ever runs -- without the training stack.

A bundle is a folder (or a ``.tar.gz`` of one) holding ``bundle.json`` and the files it
lists (``model.onnx``, ``reference.npz``, ``golden.npz``), each with its sha256.
:func:`load_bundle` refuses, with :class:`BundleError` and no fallback, anything it
cannot trust: an unknown schema, a file whose hash does not match, a file not listed,
a pickle-capable file (``.pt``, ``.pkl``, ...), a model that is not ONNX or does not
load, a missing or invalid preprocess or decision block. Archives are extracted
member by member into a private temp folder after checking every name: no absolute
paths, no ``..``, no links or devices.

Only numpy, onnxruntime, the standard library and :mod:`lineguard.preprocess` are
imported here (a test proves torch is never needed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from lineguard import LineguardError
from lineguard.edge.decision import Decision
from lineguard.edge.runner import ModelLoadError, open_runner
from lineguard.preprocess import PreprocessParams

SCHEMA_VERSION = 1
BUNDLE_FILE = "bundle.json"
MODEL_FILE = "model.onnx"
REFERENCE_FILE = "reference.npz"
GOLDEN_FILE = "golden.npz"
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "embedding")
# Files that can carry pickled code: never accepted inside a bundle, whatever bundle.json says.
FORBIDDEN_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".joblib", ".ckpt", ".dill", ".sav")
MAX_ARCHIVE_BYTES = 2_000_000_000


class BundleError(LineguardError):
    """A bundle that cannot be trusted or read; the message names the file and the problem."""


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on local disk: its metadata plus the parsed fields the runtime needs.

    ``decision`` is the bundle's :class:`~lineguard.edge.decision.Decision` (temperature and
    thresholds): what the edge applies, and what evaluating or gating the bundle uses.
    """

    path: Path
    meta: dict[str, Any]
    preprocess: PreprocessParams
    classes: tuple[str, ...]
    positive_class: str
    decision: Decision
    source: str = ""
    _tmpdir: Any = field(default=None, repr=False, compare=False)

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive_class)

    @property
    def model_path(self) -> Path:
        return self.path / str(self.meta["model"]["file"])

    @property
    def name(self) -> str:
        return str(self.meta.get("name", ""))

    @property
    def version(self) -> str:
        return str(self.meta.get("version", ""))

    @property
    def precision(self) -> str:
        return str(self.meta["model"].get("precision", "fp32"))

    @property
    def recipes(self) -> list[str]:
        return list(self.meta.get("recipes", []))

    @property
    def size_bytes(self) -> int:
        """Total size of the bundle's files (bundle.json included)."""
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())

    def file_path(self, name: str) -> Path:
        """Path of a listed file; BundleError if bundle.json does not list it."""
        if name not in self.meta.get("files", {}):
            raise BundleError(f"bundle '{self.source}' has no file '{name}' in bundle.json")
        return self.path / name

    def load_arrays(self, name: str) -> dict[str, np.ndarray]:
        """Read a listed ``.npz`` file as plain arrays (``allow_pickle=False``, always)."""
        try:
            with np.load(self.file_path(name), allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise BundleError(f"'{name}' in bundle '{self.source}' is not a valid numpy archive: {exc}") from None


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe_member_name(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith(("/", "\\")) or "\\" in name or ":" in (p.parts[0] if p.parts else ""):
        raise BundleError(f"archive member '{name}' has an absolute path; refused")
    parts = [part for part in p.parts if part not in ("", ".")]
    if any(part == ".." for part in parts):
        raise BundleError(f"archive member '{name}' escapes the bundle folder ('..'); refused")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract a bundle ``.tar.gz`` into ``dest`` safely and return the folder holding bundle.json.

    Every member is checked before anything is written: regular files and folders only
    (no symlinks, hard links, devices or FIFOs), relative names without ``..``, and a
    total size limit. Files are written by this code, not by ``tarfile.extract``.
    """
    dest = Path(dest)
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the with block below
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"bundle archive '{archive}' cannot be opened as a tar file: {exc}") from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BundleError(f"bundle archive '{archive}' is truncated or corrupt: {exc}") from None
        total = 0
        for m in members:
            _safe_member_name(m.name)
            if not (m.isfile() or m.isdir()):
                kind = "link" if (m.issym() or m.islnk()) else "special file"
                raise BundleError(f"archive member '{m.name}' is a {kind}; bundles hold regular files only")
            total += m.size
        if total > MAX_ARCHIVE_BYTES:
            raise BundleError(f"bundle archive '{archive}' unpacks to {total:,} bytes (limit {MAX_ARCHIVE_BYTES:,})")
        for m in members:
            rel = _safe_member_name(m.name)
            target = dest.joinpath(*rel.parts)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            if src is None:
                raise BundleError(f"archive member '{m.name}' cannot be read")
            try:
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise BundleError(f"bundle archive '{archive}' is truncated or corrupt at '{m.name}': {exc}") from None
    if (dest / BUNDLE_FILE).is_file():
        return dest
    subdirs = [p for p in dest.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / BUNDLE_FILE).is_file():
        return subdirs[0]
    raise BundleError(f"bundle archive '{archive}' holds no {BUNDLE_FILE}")


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar"))


def _require(cond: bool, source: str, msg: str) -> None:
    if not cond:
        raise BundleError(f"bundle '{source}': {msg}")


def _block(meta: dict[str, Any], key: str, source: str, msg: str) -> dict[str, Any]:
    """``meta[key]`` when it is a non-empty JSON object, else BundleError(msg)."""
    value = meta.get(key)
    if not isinstance(value, dict) or not value:
        raise BundleError(f"bundle '{source}': {msg}")
    return value


def _check_files(folder: Path, meta: dict[str, Any], source: str) -> None:
    """Every file on disk is listed, nothing pickle-capable, every hash matches."""
    files = _block(meta, "files", source, "bundle.json has no 'files' block (name -> sha256)")
    on_disk: list[str] = []
    for root, dirs, names in os.walk(folder):
        for d in dirs:
            if os.path.islink(os.path.join(root, d)):
                raise BundleError(f"bundle '{source}': '{d}' is a symbolic link; refused")
        for n in names:
            full = os.path.join(root, n)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            if os.path.islink(full):
                raise BundleError(f"bundle '{source}': '{rel}' is a symbolic link; refused")
            if rel.lower().endswith(FORBIDDEN_SUFFIXES):
                raise BundleError(
                    f"bundle '{source}' contains '{rel}', a pickle-capable file; the edge only loads ONNX "
                    "bundles and never unpickles -- re-export with 'lineguard export'"
                )
            on_disk.append(rel)
    for rel in on_disk:
        if rel != BUNDLE_FILE and rel not in files:
            raise BundleError(f"bundle '{source}' contains '{rel}', which bundle.json does not list; refused")
    for name, expected in files.items():
        path = folder / name
        _require(
            "/" not in name and "\\" not in name and name not in ("", ".", ".."),
            source,
            f"file name '{name}' in bundle.json is not a plain file name",
        )
        _require(path.is_file(), source, f"'{name}' is listed in bundle.json but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(
                f"bundle '{source}': sha256 of '{name}' is {actual[:16]}..., bundle.json says "
                f"{str(expected)[:16]}... -- the file was modified or corrupted; refused"
            )


def _parse_decision(meta: dict[str, Any], source: str) -> Decision:
    block = _block(meta, "decision", source, "bundle.json has no 'decision' block")
    try:
        return Decision.from_dict(block)
    except LineguardError as exc:
        raise BundleError(f"bundle '{source}': {exc}") from None


def check_onnx(path: Path, source: str = "") -> Any:
    """Open ``path`` with :func:`~lineguard.edge.runner.open_runner` (1 thread) and return its ONNX
    Runtime session; BundleError if it does not load."""
    try:
        runner = open_runner(path, "ort", threads=1)
    except ModelLoadError as exc:
        raise BundleError(
            f"bundle '{source}': '{path.name}' is not a loadable ONNX model (truncated or corrupt?): {exc.reason}"
        ) from None
    return runner.session  # type: ignore[attr-defined]


def parse_bundle(folder: Path, meta: dict[str, Any], source: str) -> Bundle:
    """Check bundle.json's blocks and build a :class:`Bundle` (hashes are checked by :func:`load_bundle`)."""
    schema = meta.get("schema")
    _require(
        schema == SCHEMA_VERSION,
        source,
        f"unknown bundle schema {schema!r}; this LineGuard reads schema {SCHEMA_VERSION} -- "
        "upgrade LineGuard or re-export the bundle",
    )
    model = _block(meta, "model", source, "bundle.json has no 'model' block")
    fmt = model.get("format")
    _require(fmt == "onnx", source, f"model format is {fmt!r}; the edge only runs 'onnx' models (no pickles)")
    model_file = str(model.get("file", ""))
    _require(model_file.endswith(".onnx"), source, f"model file '{model_file}' is not an .onnx file")
    _require(
        meta["files"].get(model_file) == model.get("sha256"),
        source,
        f"model.sha256 and files['{model_file}'] disagree in bundle.json",
    )
    raw_classes = meta.get("classes")
    _require(
        isinstance(raw_classes, list) and len(raw_classes) >= 2 and all(isinstance(c, str) for c in raw_classes),
        source,
        "'classes' must be a list of at least two class names",
    )
    classes = [str(c) for c in raw_classes or []]
    positive = meta.get("positive_class")
    _require(positive in classes, source, f"positive_class {positive!r} is not one of the classes {classes}")
    block = _block(meta, "preprocess", source, "bundle.json has no 'preprocess' block; it is needed to feed the model")
    try:
        params = PreprocessParams.from_dict(block)
    except LineguardError as exc:
        raise BundleError(f"bundle '{source}': {exc}") from None
    return Bundle(
        path=folder,
        meta=meta,
        preprocess=params,
        classes=tuple(classes),
        positive_class=str(positive),
        decision=_parse_decision(meta, source),
        source=source,
    )


def _check_model_io(session: Any, bundle: Bundle) -> None:
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    src = bundle.source
    _require(list(inputs) == [INPUT_NAME], src, f"model inputs are {list(inputs)}, expected ['{INPUT_NAME}']")
    _require("logits" in outputs, src, f"model outputs are {list(outputs)}; 'logits' is required")
    shape = inputs[INPUT_NAME]
    h, w = bundle.preprocess.size
    if len(shape) == 4 and all(isinstance(d, int) for d in shape[1:]):
        _require(
            list(shape[1:]) == [bundle.preprocess.channels, h, w],
            src,
            f"model input is {shape[1:]} but the preprocess block says 3x{h}x{w}",
        )
    n_out = outputs["logits"][-1] if outputs["logits"] else None
    if isinstance(n_out, int):
        _require(
            n_out == len(bundle.classes),
            src,
            f"model has {n_out} outputs but bundle.json lists {len(bundle.classes)} classes",
        )


def read_meta(folder: Path, source: str) -> dict[str, Any]:
    """Read and parse ``bundle.json`` from a folder."""
    path = folder / BUNDLE_FILE
    if not path.is_file():
        raise BundleError(f"'{source}' is not a bundle: no {BUNDLE_FILE} (make one with: lineguard export)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle '{source}': {BUNDLE_FILE} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise BundleError(f"bundle '{source}': {BUNDLE_FILE} must hold a JSON object")
    return meta


def load_bundle(path: str | Path, check_model: bool = True) -> Bundle:
    """Open a bundle folder or ``.tar.gz``, verify everything, and return it.

    Refuses (BundleError) unknown schemas, unlisted or pickle-capable files, hash
    mismatches, non-ONNX or unloadable models, and missing/invalid preprocess or decision
    blocks. ``check_model`` also opens the model in ONNX Runtime and checks its inputs
    and outputs against bundle.json. Archives are unpacked into a private temp folder
    that is removed when the Bundle is garbage-collected.
    """
    p = Path(path)
    source = str(path)
    if not p.exists():
        raise BundleError(f"bundle '{source}' does not exist")
    tmpdir = None
    folder = p
    if _is_archive(p):
        tmpdir = tempfile.mkdtemp(prefix="lineguard-bundle-")
        try:
            folder = extract_archive(p, tmpdir)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
    elif not p.is_dir():
        raise BundleError(f"bundle '{source}' is neither a folder nor a .tar.gz archive")
    try:
        meta = read_meta(folder, source)
        _require(meta.get("schema") == SCHEMA_VERSION, source,
                 f"unknown bundle schema {meta.get('schema')!r}; this LineGuard reads schema {SCHEMA_VERSION} -- "
                 "upgrade LineGuard or re-export the bundle")
        _check_files(folder, meta, source)
        bundle = parse_bundle(folder, meta, source)
        if check_model:
            _check_model_io(check_onnx(bundle.model_path, source), bundle)
    except BaseException:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    if tmpdir is not None:
        object.__setattr__(bundle, "_tmpdir", weakref.finalize(bundle, shutil.rmtree, tmpdir, True))
    return bundle
