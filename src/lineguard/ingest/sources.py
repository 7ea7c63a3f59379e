"""Reading a source: a folder, archive, CSV or Label Studio export, and nothing outside it.

Lists candidate files (archive members are read one by one into memory under size
limits), label tables and per-file refusals: symlinks leaving the source, zip-slip,
absolute or ``..`` paths, links inside archives, nested archives, oversized files.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import re
import stat
import tarfile
import zipfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from lineguard import LineguardError, storage
from lineguard.config import IngestConfig
from lineguard.ingest.rules import LabelRules, LabelVotes, normalise_name, safe_relpath

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    "path": ("file", "path", "filename", "filepath", "image", "imagepath", "imagefile", "img"),
    "label": ("label", "class", "classname", "labels", "category"),
    "recipe": ("recipe", "product", "recipename"),
    "defect_type": ("defect", "defecttype", "defects"),
}
_JUNK_FOLDERS = ("__MACOSX",)


def _is_hidden(rel: str) -> bool:
    return any(part.startswith(".") or part in _JUNK_FOLDERS for part in rel.split("/"))


def _is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


class IngestError(LineguardError):
    """The source cannot be ingested at all (missing, unknown format, unreadable table)."""


@dataclass
class SourceFile:
    """One candidate file: where it came from and how to get its bytes."""

    source_path: str
    url: str | None = None
    data: bytes | None = None


@dataclass
class SourceScan:
    """Everything one scan of a source found: candidate files, label tables, rejections, notes."""

    entries: list[SourceFile] = field(default_factory=list)
    tables: list[tuple[str, bytes]] = field(default_factory=list)  # (csv source path, bytes)
    rejected: list[dict[str, str]] = field(default_factory=list)
    hidden: int = 0
    extra_votes: dict[str, LabelVotes] = field(default_factory=dict)  # e.g. from Label Studio
    unlabelled: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def reject(self, source_path: str, reason: str, detail: str = "") -> None:
        self.rejected.append({"source_path": source_path, "reason": reason, "detail": detail})


def _walk_local(root: str, src: SourceScan, config: IngestConfig) -> list[tuple[str, str]]:
    """(relpath, url) of every regular file under a local root; symlinks leaving it are refused."""
    real_root = os.path.realpath(root)
    found: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if os.path.islink(full) and not _is_hidden(rel):
                target = os.path.realpath(full)
                if os.path.commonpath([real_root, target]) != real_root:
                    src.reject(rel, "symlink_outside_source", f"-> {os.readlink(full)}")
                else:
                    src.reject(rel, "symlink_folder", f"-> {os.readlink(full)} (folder links are not followed)")
        hidden = [d for d in dirnames if _is_hidden(d)]
        src.hidden += len(hidden)  # a hidden folder counts once and is not walked
        dirnames[:] = sorted(
            d for d in dirnames if d not in hidden and not os.path.islink(os.path.join(dirpath, d))
        )
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if _is_hidden(rel):
                src.hidden += 1
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(full)
                if os.path.commonpath([real_root, target]) != real_root:
                    src.reject(rel, "symlink_outside_source", f"-> {os.readlink(full)}")
                    continue
                if not os.path.isfile(target):
                    src.reject(rel, "not_a_file", "symlink to something that is not a regular file")
                    continue
            elif not stat.S_ISREG(st.st_mode):
                src.reject(rel, "not_a_file", "not a regular file")
                continue
            found.append((rel, full))
    return found


def _walk(url: str, src: SourceScan, config: IngestConfig) -> list[tuple[str, str]]:
    if storage.is_local(url):
        return _walk_local(storage.local_path(url), src, config)
    found = []
    for rel in storage.walk_files(url):
        if _is_hidden(rel):
            src.hidden += 1
            continue
        found.append((rel, storage.join(url, rel)))
    return found


def _read_archive(url: str, data: bytes, prefix: str, src: SourceScan, config: IngestConfig) -> None:
    """Add an archive's members as entries ``<prefix>/<member>``; unsafe members are refused."""
    name = url.lower()
    budget = config.max_archive_bytes

    def add(member: str, read: Callable[[], bytes], size: int, kind_ok: bool, kind: str) -> None:
        nonlocal budget
        safe = safe_relpath(member)
        if safe is None:
            src.reject(f"{prefix}/{member}" if prefix else member, "unsafe_path",
                       "archive member with an absolute path or '..' (zip-slip) refused")
            return
        rel = f"{prefix}/{safe}" if prefix else safe
        if _is_hidden(safe):
            src.hidden += 1
            return
        if not kind_ok:
            src.reject(rel, kind, "links and special files inside archives are refused")
            return
        if _is_archive(safe):
            src.reject(rel, "nested_archive", "archives inside archives are not read")
            return
        if size > config.max_file_bytes or size > budget:
            src.reject(rel, "file_too_large", f"{size:,} bytes > limit")
            return
        blob = read()
        budget -= len(blob)
        if len(blob) > config.max_file_bytes:
            src.reject(rel, "file_too_large", "member larger than its header claims")
            return
        if safe.lower().endswith(".csv"):
            src.tables.append((rel, blob))
        else:
            src.entries.append(SourceFile(rel, data=blob))

    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    mode = info.external_attr >> 16
                    is_link = stat.S_ISLNK(mode)
                    limit = config.max_file_bytes + 1

                    def read_zip(info: zipfile.ZipInfo = info, limit: int = limit) -> bytes:
                        with zf.open(info) as f:
                            return f.read(limit)  # bounded: a lying header cannot blow memory

                    add(info.filename, read_zip, info.file_size, not is_link, "symlink_in_archive")
        else:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
                for member in tf:
                    if member.isdir():
                        continue
                    limit = config.max_file_bytes + 1

                    def read_tar(member: tarfile.TarInfo = member, limit: int = limit) -> bytes:
                        f = tf.extractfile(member)
                        return f.read(limit) if f is not None else b""

                    kind = "symlink_in_archive" if (member.issym() or member.islnk()) else "not_a_file"
                    add(member.name, read_tar, member.size, member.isfile(), kind)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError, NotImplementedError) as exc:
        src.reject(prefix or url, "corrupt_archive", str(exc))


def open_source(src_url: str, config: IngestConfig, root: str | None = None) -> tuple[SourceScan, str]:
    """List a source: its candidate files, label tables and refusals. Returns (source, kind)."""
    fs, path = storage.filesystem(src_url)
    try:
        is_dir = bool(fs.isdir(path))
        is_file = not is_dir and bool(fs.isfile(path))
    except Exception as exc:  # network or permission trouble from any backend
        raise IngestError(f"cannot reach source '{src_url}': {exc}") from None
    if storage.is_local(src_url) and os.path.islink(storage.local_path(src_url).rstrip("/")) and not is_dir:
        is_file = True
    if not is_dir and not is_file:
        raise IngestError(f"source '{src_url}' does not exist; expected a folder, archive, CSV or Label Studio export")
    src = SourceScan()
    lower = src_url.lower().rstrip("/")
    if is_dir:
        for rel, url in _walk(src_url, src, config):
            _add_file(rel, url, src, config)
        return src, "folder"
    if _is_archive(lower):
        data = _read_limited(src_url, config.max_archive_bytes)
        _read_archive(src_url, data, "", src, config)
        return src, "archive"
    if lower.endswith(".csv"):
        src.tables.append(("", _read_limited(src_url, config.max_file_bytes)))
        return src, f"csv:{root or _parent(src_url)}"
    if lower.endswith(".json"):
        _add_labelstudio(src_url, root or _parent(src_url), src, config)
        return src, "labelstudio"
    raise IngestError(
        f"source '{src_url}' is a file of an unknown kind; expected a folder, an archive "
        f"({', '.join(ARCHIVE_SUFFIXES)}), a .csv of paths and labels or a Label Studio .json export"
    )


def _parent(url: str) -> str:
    url = url.rstrip("/")
    if storage.is_local(url):
        return os.path.dirname(os.path.abspath(storage.local_path(url)))
    return url.rsplit("/", 1)[0]


def _read_limited(url: str, limit: int) -> bytes:
    fs, path = storage.filesystem(url)
    try:
        size = fs.size(path)
    except Exception:
        size = None
    if size is not None and size > limit:
        raise IngestError(f"'{url}' is {size:,} bytes, over the limit of {limit:,} (ingest.max_archive_bytes)")
    return storage.read_bytes(url)


def _add_file(rel: str, url: str, src: SourceScan, config: IngestConfig) -> None:
    if _is_archive(rel):
        try:
            data = _read_limited(url, config.max_archive_bytes)
        except IngestError as exc:
            src.reject(rel, "file_too_large", str(exc))
            return
        _read_archive(url, data, rel, src, config)
    elif rel.lower().endswith(".csv"):
        src.tables.append((rel, storage.read_bytes(url)))
    else:
        src.entries.append(SourceFile(rel, url=url))


def _add_labelstudio(src_url: str, root: str, src: SourceScan, config: IngestConfig) -> None:
    """Label Studio export: labelled records from :func:`lineguard.labelstudio.parse_export`."""
    from lineguard.labelstudio import KEPT_PROBLEM_KINDS, parse_export

    parsed = parse_export(src_url, root, label_synonyms=config.label_synonyms, positive_class=config.positive_class)
    for problem in parsed.problems:
        where = problem.image_url or f"task {problem.task_id}"
        if problem.kind in KEPT_PROBLEM_KINDS:
            src.notes.append(f"Label Studio task {problem.task_id}: {problem.detail}")
        elif problem.kind == "unlabelled":
            src.unlabelled.append(where)
        else:
            src.reject(where, f"labelstudio_{problem.kind}", problem.detail)
    for record in parsed.records:
        rel = safe_relpath(record.source_path)
        if rel is None:
            src.reject(record.source_path, "unsafe_path", "Label Studio task points outside the root")
            continue
        if not _add_checked_relpath(root, rel, src):
            continue
        votes = LabelVotes(defect=normalise_name(record.defect_type or ""))
        if record.label:
            votes.label["labelstudio"] = {record.label}
        if record.recipe:
            votes.recipe["labelstudio"] = {normalise_name(record.recipe)}
        src.extra_votes[rel] = votes


def _add_checked_relpath(root: str, rel: str, src: SourceScan) -> bool:
    """Add ``root/rel`` as an entry if it is a file inside root (symlinks resolved locally)."""
    url = storage.join(root, rel)
    if storage.is_local(url):
        real_root = os.path.realpath(storage.local_path(root))
        target = os.path.realpath(storage.local_path(url))
        if os.path.commonpath([real_root, target]) != real_root:
            src.reject(rel, "symlink_outside_source", "resolves outside the source folder")
            return False
        if not os.path.isfile(target):
            src.reject(rel, "missing", "listed but not found")
            return False
    elif not storage.exists(url):
        src.reject(rel, "missing", "listed but not found")
        return False
    src.entries.append(SourceFile(rel, url=url))
    return True


def _parse_table(name: str, data: bytes, rules: LabelRules, src: SourceScan) -> dict[str, list[dict[str, str]]]:
    """Rows of a label CSV keyed by the file path they name, relative to the source root."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        src.reject(name or "labels.csv", "bad_csv", "empty CSV")
        return {}
    keys = [re.sub(r"[\s_\-]+", "", h.strip().lower()) for h in header]
    cols: dict[str, int] = {}
    for role, names in _CSV_COLUMNS.items():
        for i, k in enumerate(keys):
            if k in names and role not in cols:
                cols[role] = i
    if "path" not in cols:
        msg = f"CSV '{name or 'source'}' has no file column; expected a header like file, path, filename or image"
        if not name:
            raise IngestError(msg)
        src.reject(name, "bad_csv", msg)
        return {}
    base = posixpath.dirname(name) if name else ""
    rows: dict[str, list[dict[str, str]]] = defaultdict(list)
    for line_no, row in enumerate(reader, start=2):
        if not row or not any(c.strip() for c in row):
            continue
        cell = row[cols["path"]] if cols["path"] < len(row) else ""
        rel = safe_relpath(cell)
        if rel is None:
            src.reject(cell.strip() or f"{name}:{line_no}", "unsafe_path",
                       f"{name or 'CSV'} line {line_no}: absolute path, URL or '..' refused")
            continue
        full = f"{base}/{rel}" if base else rel
        values = {role: row[i].strip() if i < len(row) else "" for role, i in cols.items() if role != "path"}
        rows[full].append(values)
    return dict(rows)




def label_tables(source: SourceScan, kind: str, rules: LabelRules) -> dict[str, list[dict[str, str]]]:
    """Every CSV row keyed by the source path it labels; rows naming no file are reported as missing.

    For a CSV source (``kind`` ``csv:<root>``) the files it lists become the entries.
    """
    table_rows: dict[str, list[dict[str, str]]] = defaultdict(list)
    for name, data in source.tables:
        for path, rows in _parse_table(name, data, rules, source).items():
            table_rows[path].extend(rows)
    if kind.startswith("csv:"):
        root = kind[4:]
        for path in sorted(table_rows):
            _add_checked_relpath(root, path, source)
        return dict(table_rows)
    known = {e.source_path for e in source.entries}
    lower: dict[str, list[str]] = defaultdict(list)
    for p in known:
        lower[p.lower()].append(p)
    for path in sorted(table_rows):
        if path in known:
            continue
        match = lower.get(path.lower(), [])
        rows = table_rows.pop(path)
        if len(match) == 1:  # Windows-written CSVs often differ in case only
            table_rows[match[0]].extend(rows)
        else:
            source.reject(path, "missing", "listed in a CSV but not found in the source")
    return dict(table_rows)
