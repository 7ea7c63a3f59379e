"""Load and verify a bundle -- the only thing the edge ever runs -- without the training stack.

A bundle is a folder (or a ``.tar.gz`` of one) holding ``bundle.json`` and the files it
lists (``model.onnx``, ``reference.npz``, ``golden.npz``), each with its sha256, plus
``bundle.sig.json`` when it is signed. :func:`load_bundle` refuses, with
:class:`BundleError` and no fallback, anything it cannot trust: an unknown schema, a
bundle.json edited after export (its ``integrity`` digest), a file whose hash does not
match, a file not listed, a model outside the bundle or not covered by a hash, a
pickle-capable file (``.pt``, ``.pkl``, ...), a model that is not ONNX or does not load,
a missing or invalid preprocess or decision block, and -- with trusted keys configured
-- a bundle that is not signed by one of them (:mod:`lineguard.edge.signing`). Every read
is bounded (:class:`BundleLimits`). Archives are extracted member by member into a
private temp folder after checking every name: no absolute paths, no ``..``, no links
or devices, no name twice.

Only numpy, onnxruntime, the standard library and :mod:`lineguard.preprocess` are
imported here (a test proves torch is never needed).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
import tarfile
import tempfile
import weakref
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from lineguard import LineguardError
from lineguard.edge.decision import Decision
from lineguard.edge.runner import ModelLoadError, open_runner
from lineguard.edge.signing import (
    SIGNATURE_FILE,
    SigningError,
    Trust,
    check_integrity,
    read_signature,
    verify_signature,
)
from lineguard.preprocess import PreprocessParams

# 2: bundle.json carries an ``integrity`` digest of its own content (schema 1 had none).
SCHEMA_VERSION = 2
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
class BundleLimits:
    """The most a bundle may hold; the defaults match the config's ``limits`` section.

    A bundle is a few MB: these bounds only stop a hostile one from costing memory,
    disk or time before it is refused.
    """

    max_json_bytes: int = 10_000_000
    max_files: int = 64
    max_bytes: int = MAX_ARCHIVE_BYTES


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
    digest: str = ""  # sha256:<hex> of bundle.json's canonical content: pins the whole bundle
    signed_by: str | None = None  # key id of the trusted key that signed it, when keys were configured
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

    def load_arrays(self, name: str, max_bytes: int = MAX_ARCHIVE_BYTES) -> dict[str, np.ndarray]:
        """Read a listed ``.npz`` file as plain arrays (``allow_pickle=False``, always).

        The arrays' unpacked size is checked first: a small ``.npz`` cannot unpack to more
        than ``max_bytes``.
        """
        try:
            with zipfile.ZipFile(self.file_path(name)) as zf:
                unpacked = sum(i.file_size for i in zf.infolist())
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise BundleError(f"'{name}' in bundle '{self.source}' is not a valid numpy archive: {exc}") from None
        if unpacked > max_bytes:
            raise BundleError(f"'{name}' in bundle '{self.source}' unpacks to {unpacked:,} bytes (limit {max_bytes:,})")
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


def extract_archive(archive: str | Path, dest: str | Path, limits: BundleLimits | None = None) -> Path:
    """Extract a bundle ``.tar.gz`` into ``dest`` safely and return the folder holding bundle.json.

    Every member is checked before anything is written: regular files and folders only
    (no symlinks, hard links, devices or FIFOs), relative names without ``..``, no name
    twice (nor a file where a folder goes), at most ``limits.max_files`` files and
    ``limits.max_bytes`` in all. Headers are read one by one, so a tar of a million
    empty members is refused after the first few. Files are written by this code, not by
    ``tarfile.extract``.
    """
    limits = limits or BundleLimits()
    dest = Path(dest)
    try:
        size = os.stat(archive).st_size
    except OSError as exc:
        raise BundleError(f"bundle archive '{archive}' cannot be read: {exc.strerror or exc}") from None
    if size > limits.max_bytes:
        raise BundleError(f"bundle archive '{archive}' is {size:,} bytes (limit {limits.max_bytes:,})")
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the with block below
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"bundle archive '{archive}' cannot be opened as a tar file: {exc}") from None
    with tar:
        members: list[tarfile.TarInfo] = []
        try:
            while (m := tar.next()) is not None:
                members.append(m)
                if len(members) > 4 * limits.max_files:
                    raise BundleError(f"bundle archive '{archive}' holds more than {4 * limits.max_files} members; "
                                      f"a bundle has a handful of files")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BundleError(f"bundle archive '{archive}' is truncated or corrupt: {exc}") from None
        total, files = 0, 0
        seen: set[str] = set()
        dirs: set[str] = set()
        for m in members:
            rel = _safe_member_name(m.name)
            if not (m.isfile() or m.isdir()):
                kind = "link" if (m.issym() or m.islnk()) else "special file"
                raise BundleError(f"archive member '{m.name}' is a {kind}; bundles hold regular files only")
            key = rel.as_posix()
            if key in seen or (m.isfile() and key in dirs) or (m.isdir() and key in seen - dirs):
                raise BundleError(f"archive member '{m.name}' appears twice (or as both a file and a folder); refused")
            seen.add(key)
            parents = {p.as_posix() for p in rel.parents if p.as_posix() != "."}
            if parents & (seen - dirs - {key}):
                raise BundleError(f"archive member '{m.name}' lies inside a file of the archive; refused")
            dirs |= parents
            if m.isdir():
                dirs.add(key)
            else:
                files += 1
                total += m.size
        if files > limits.max_files:
            raise BundleError(f"bundle archive '{archive}' holds {files} files (limit {limits.max_files})")
        if total > limits.max_bytes:
            raise BundleError(f"bundle archive '{archive}' unpacks to {total:,} bytes (limit {limits.max_bytes:,})")
        for m in members:
            rel = _safe_member_name(m.name)
            target = dest.joinpath(*rel.parts)
            try:
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                if src is None:
                    raise BundleError(f"archive member '{m.name}' cannot be read")
                with src, open(target, "xb") as out:
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


def _check_files(folder: Path, meta: dict[str, Any], source: str, limits: BundleLimits | None = None) -> None:
    """Every file on disk is a listed regular file, nothing pickle-capable, every hash matches, all bounded."""
    limits = limits or BundleLimits()
    files = _block(meta, "files", source, "bundle.json has no 'files' block (name -> sha256)")
    on_disk: list[str] = []
    total = 0
    for root, dirs, names in os.walk(folder):
        for d in dirs:
            if os.path.islink(os.path.join(root, d)):
                raise BundleError(f"bundle '{source}': '{d}' is a symbolic link; refused")
        for n in names:
            full = os.path.join(root, n)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                raise BundleError(f"bundle '{source}': '{rel}' is a symbolic link; refused")
            if not stat.S_ISREG(st.st_mode):
                raise BundleError(f"bundle '{source}': '{rel}' is not a regular file (a FIFO, device or socket); refused")
            if rel.lower().endswith(FORBIDDEN_SUFFIXES):
                raise BundleError(
                    f"bundle '{source}' contains '{rel}', a pickle-capable file; the edge only loads ONNX "
                    "bundles and never unpickles -- re-export with 'lineguard export'"
                )
            on_disk.append(rel)
            total += st.st_size
    _require(len(on_disk) <= limits.max_files, source, f"holds {len(on_disk)} files (limit {limits.max_files})")
    _require(total <= limits.max_bytes, source, f"holds {total:,} bytes (limit {limits.max_bytes:,})")
    for rel in on_disk:
        if rel not in (BUNDLE_FILE, SIGNATURE_FILE) and rel not in files:
            raise BundleError(f"bundle '{source}' contains '{rel}', which bundle.json does not list; refused")
    for name, expected in files.items():
        _require(
            isinstance(name, str) and "/" not in name and "\\" not in name and name not in ("", ".", "..")
            and name not in (BUNDLE_FILE, SIGNATURE_FILE),
            source,
            f"file name {name!r} in bundle.json is not a plain file name",
        )
        _require(isinstance(expected, str) and len(expected) == 64, source,
                 f"files[{name!r}] in bundle.json is not a sha256 hex digest")
        path = folder / name
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
    model_file = model.get("file")
    _require(isinstance(model_file, str) and model_file.endswith(".onnx"), source,
             f"model file {model_file!r} is not an .onnx file")
    # The model the edge runs is a plain file of this bundle, listed with its hash: never a path
    # outside it (../x.onnx, /abs/x.onnx), never a file no hash covers.
    _require("/" not in str(model_file) and "\\" not in str(model_file) and not str(model_file).startswith("."),
             source, f"model file {model_file!r} must be a plain file name inside the bundle")
    files = _block(meta, "files", source, "bundle.json has no 'files' block (name -> sha256)")
    _require(str(model_file) in files, source, f"model file '{model_file}' is not listed in files; every byte that "
             "decides must be covered by a hash")
    _require(
        isinstance(model.get("sha256"), str) and files.get(str(model_file)) == model.get("sha256"),
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
    _check_preprocess(params, source)
    return Bundle(
        path=folder,
        meta=meta,
        preprocess=params,
        classes=tuple(classes),
        positive_class=str(positive),
        decision=_parse_decision(meta, source),
        source=source,
    )


def _check_preprocess(params: PreprocessParams, source: str) -> None:
    """Preprocessing that cannot give finite model input is refused: NaN std makes every score NaN,
    and NaN >= threshold is false -- every item would be accepted."""
    for name, values in (("mean", params.mean), ("std", params.std)):
        _require(all(math.isfinite(v) for v in values), source, f"preprocess {name} {list(values)} is not finite")
    _require(all(v > 0 for v in params.std), source, f"preprocess std {list(params.std)} must be > 0")
    _require(0 <= params.pad_value <= 255, source, f"preprocess pad_value {params.pad_value} is outside 0..255")
    _require(max(params.size) <= 8192, source, f"preprocess size {list(params.size)} is larger than 8192 px")


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


def read_meta(folder: Path, source: str, max_bytes: int = 10_000_000) -> dict[str, Any]:
    """Read and parse ``bundle.json`` from a folder (a regular file of at most ``max_bytes``)."""
    path = folder / BUNDLE_FILE
    if not path.is_file() or path.is_symlink():
        raise BundleError(f"'{source}' is not a bundle: no {BUNDLE_FILE} (make one with: lineguard export)")
    size = path.stat().st_size
    if size > max_bytes:
        raise BundleError(f"bundle '{source}': {BUNDLE_FILE} is {size:,} bytes (limit {max_bytes:,}); refused")
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read(max_bytes + 1).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle '{source}': {BUNDLE_FILE} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BundleError(f"bundle '{source}': {BUNDLE_FILE} nests too deeply to be a bundle") from None
    if not isinstance(meta, dict):
        raise BundleError(f"bundle '{source}': {BUNDLE_FILE} must hold a JSON object")
    return meta


def load_bundle(
    path: str | Path,
    check_model: bool = True,
    *,
    trust: Trust | None = None,
    expected_digest: str | None = None,
    limits: BundleLimits | None = None,
) -> Bundle:
    """Open a bundle folder or ``.tar.gz``, verify everything, and return it.

    Refuses (BundleError) unknown schemas, a bundle.json that fails its integrity digest,
    unlisted or pickle-capable files, hash mismatches, a model outside the bundle or not
    hashed, non-ONNX or unloadable models, and missing/invalid preprocess or decision
    blocks. With ``trust`` holding keys, the bundle must be signed by one of them; with a
    pinned digest (``trust.digest`` or ``expected_digest``) it must be that bundle. No
    fallback in any case. ``check_model`` also opens the model in ONNX Runtime and checks
    its inputs and outputs against bundle.json. Archives are unpacked into a private temp
    folder that is removed when the Bundle is garbage-collected.
    """
    limits = limits or BundleLimits()
    trust = trust or Trust()
    p = Path(path)
    source = str(path)
    if not p.exists():
        raise BundleError(f"bundle '{source}' does not exist")
    tmpdir = None
    folder = p
    if _is_archive(p):
        tmpdir = tempfile.mkdtemp(prefix="lineguard-bundle-")
        try:
            folder = extract_archive(p, tmpdir, limits)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
    elif not p.is_dir():
        raise BundleError(f"bundle '{source}' is neither a folder nor a .tar.gz archive")
    try:
        meta = read_meta(folder, source, limits.max_json_bytes)
        _require(meta.get("schema") == SCHEMA_VERSION, source,
                 f"unknown bundle schema {meta.get('schema')!r}; this LineGuard reads schema {SCHEMA_VERSION} -- "
                 "upgrade LineGuard or re-export the bundle")
        try:
            digest = check_integrity(meta)
            pinned = [d for d in (expected_digest, trust.digest) if d]
            for want in pinned:
                if digest != want:
                    raise SigningError(f"bundle digest is {digest[:23]}..., but {want[:23]}... is pinned; refused")
            signed_by = verify_signature(read_signature(folder), digest, trust)
        except SigningError as exc:
            raise BundleError(f"bundle '{source}': {exc}") from None
        _check_files(folder, meta, source, limits)
        bundle = parse_bundle(folder, meta, source)
        object.__setattr__(bundle, "digest", digest)
        object.__setattr__(bundle, "signed_by", signed_by)
        if check_model:
            _check_model_io(check_onnx(bundle.model_path, source), bundle)
    except BaseException:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    if tmpdir is not None:
        object.__setattr__(bundle, "_tmpdir", weakref.finalize(bundle, shutil.rmtree, tmpdir, True))
    return bundle

