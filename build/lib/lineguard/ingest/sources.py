"""Reading a source: a folder, archive, CSV or Label Studio export, and nothing outside it.

Lists candidate files (archive members are read one by one into memory under size
limits), label tables and per-file refusals: symlinks leaving the source, zip-slip,
absolute or ``..`` paths, links inside archives, nested archives, oversized files.
"""

from __future__ import annotations

import csv
import functools
import io
import lzma
import os
import posixpath
import re
import stat
import tarfile
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, BinaryIO

from lineguard import LineguardError, storage
from lineguard.config import IngestConfig
from lineguard.ingest.rules import LabelRules, LabelVotes, normalise_name, safe_relpath

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    "path": ("file", "path", "filename", "filepath", "image", "imagepath", "imagefile", "img"),
    "label": ("label", "class", "classname", "labels", "category"),
    "recipe": ("recipe", "product", "recipename"),
    "defect_type": ("defect", "defecttype", "defects"),
    "split": ("split", "subset", "set", "fold", "partition"),
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
    url: str


@dataclass
class SourceScan:
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
    """(relpath, url) of every regular file under a local root; symlinks leaving it are refused.

    The relpath is the :func:`display_name` (non-UTF-8 bytes escaped), the url the real path.
    """
    real_root = os.path.realpath(root)
    found: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            rel = display_name(f"{rel_dir}/{d}" if rel_dir else d)
            if os.path.islink(full) and not _is_hidden(rel):
                target = os.path.realpath(full)
                if os.path.commonpath([real_root, target]) != real_root:
                    src.reject(rel, "symlink_outside_source", f"-> {display_name(os.readlink(full))}")
                else:
                    src.reject(rel, "symlink_folder", f"-> {display_name(os.readlink(full))} (folder links are not followed)")
        hidden = [d for d in dirnames if _is_hidden(d)]
        src.hidden += len(hidden)  # a hidden folder counts once and is not walked
        dirnames[:] = sorted(
            d for d in dirnames if d not in hidden and not os.path.islink(os.path.join(dirpath, d))
        )
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = display_name(f"{rel_dir}/{name}" if rel_dir else name)
            if _is_hidden(rel):
                src.hidden += 1
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(full)
                if os.path.commonpath([real_root, target]) != real_root:
                    src.reject(rel, "symlink_outside_source", f"-> {display_name(os.readlink(full))}")
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
        rel = display_name(rel)
        if _is_hidden(rel):
            src.hidden += 1
            continue
        found.append((rel, storage.join(url, rel)))
    return found


def display_name(name: str) -> str:
    """A file name as text that any writer accepts: bytes that are not UTF-8 become ``\\xNN``.

    ``os.walk`` and ``tarfile`` hand undecodable bytes over as lone surrogates, which the
    manifest (parquet), report.json and the terminal cannot encode; the escaped form
    keeps them visible and distinct.
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class _Scratch:
    """Archive members unpacked one at a time into the ingest's private temp folder, under a budget.

    Members are never held in memory together: each is streamed to its own file (at most
    ``max_file_bytes``), and the total over every archive of the source is capped by
    ``max_unpacked_bytes`` (the decompression budget; zip bombs stop there).
    """

    def __init__(self, folder: str, config: IngestConfig) -> None:
        self.folder = os.path.join(folder, "members")
        os.makedirs(self.folder, exist_ok=True)
        self.config = config
        self.budget = config.max_unpacked_bytes
        self._n = 0

    def unpack(self, stream: IO[bytes]) -> tuple[str | None, str, str]:
        """Copy one member out: (path, "", "") or (None, reason, detail) when it is refused."""
        limit = self.config.max_file_bytes
        path = os.path.join(self.folder, f"{self._n:08d}")
        self._n += 1
        written = 0
        try:
            with open(path, "wb") as out:
                while True:
                    chunk = stream.read(min(_COPY_CHUNK, limit + 1 - written))
                    if not chunk:
                        break
                    written += len(chunk)
                    if written > limit:
                        raise _Refused("file_too_large", f"unpacks to more than {limit:,} bytes (ingest.max_file_bytes)")
                    if written > self.budget:
                        raise _Refused("decompression_budget", "the source's archives unpack to more than "
                                       f"{self.config.max_unpacked_bytes:,} bytes (ingest.max_unpacked_bytes)")
                    out.write(chunk)
        except _Refused as exc:
            os.unlink(path)
            self.budget -= written
            return None, exc.reason, exc.detail
        except Exception as exc:  # any decompressor or CRC failure of an untrusted member
            os.unlink(path)
            return None, "corrupt_member", f"{type(exc).__name__}: {str(exc)[:200]}"
        self.budget -= written
        return path, "", ""


class _Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail


_COPY_CHUNK = 1 << 20


def _read_archive(url: str, prefix: str, src: SourceScan, config: IngestConfig, scratch: _Scratch) -> None:
    """Add an archive's members as entries ``<prefix>/<member>``; unsafe or oversized members are refused.

    The archive is streamed from its file (never read whole), members are unpacked to
    ``scratch`` one by one, and at most ``ingest.max_archive_members`` are looked at.
    """
    name = url.lower()
    where = prefix or url

    def add(member: str, open_member: Callable[[], IO[bytes] | None], size: int, kind_ok: bool, kind: str) -> None:
        member = display_name(member)
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
        if size > config.max_file_bytes:
            src.reject(rel, "file_too_large", f"{size:,} bytes > ingest.max_file_bytes")
            return
        if size > scratch.budget:
            src.reject(rel, "decompression_budget", f"{size:,} bytes > what is left of ingest.max_unpacked_bytes")
            return
        try:
            stream = open_member()
        except Exception as exc:  # encrypted, unsupported compression, corrupt header
            src.reject(rel, "corrupt_member", f"{type(exc).__name__}: {str(exc)[:200]}")
            return
        if stream is None:
            src.reject(rel, "corrupt_member", "member cannot be read")
            return
        with stream:
            path, reason, detail = scratch.unpack(stream)
        if path is None:
            src.reject(rel, reason, detail)
            return
        if safe.lower().endswith(".csv"):
            try:
                src.tables.append((rel, storage.read_bytes(path, config.max_table_bytes)))
            except storage.StorageError:
                src.reject(rel, "file_too_large", f"CSV over ingest.max_table_bytes ({config.max_table_bytes:,})")
            finally:
                os.unlink(path)
        else:
            src.entries.append(SourceFile(rel, url=path))

    try:
        with storage.open_read(url, config.max_archive_bytes) as f:
            if name.endswith(".zip"):
                _read_zip(f, where, add, src, config)
            else:
                _read_tar(f, where, add, src, config)
    except storage.TooLargeError as exc:
        src.reject(where, "file_too_large", f"{exc} (ingest.max_archive_bytes)")
    except storage.StorageError as exc:
        src.reject(where, "unreadable", str(exc))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError, NotImplementedError,
            zlib.error, lzma.LZMAError) as exc:
        src.reject(where, "corrupt_archive", f"{type(exc).__name__}: {str(exc)[:200]}")


_Add = Callable[[str, Callable[[], "IO[bytes] | None"], int, bool, str], None]


def _read_zip(f: BinaryIO, where: str, add: _Add, src: SourceScan, config: IngestConfig) -> None:
    with zipfile.ZipFile(f) as zf:
        infos = zf.infolist()
        if len(infos) > config.max_archive_members:
            src.reject(where, "too_many_members", f"{len(infos):,} members > ingest.max_archive_members "
                       f"({config.max_archive_members:,}); archive not read")
            return
        for info in infos:
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                src.reject(f"{where}/{display_name(info.filename)}", "encrypted",
                           "encrypted archive members are refused (unpack it with its password first)")
                continue
            is_link = stat.S_ISLNK(info.external_attr >> 16)
            add(info.filename, functools.partial(zf.open, info), info.file_size, not is_link, "symlink_in_archive")


def _read_tar(f: BinaryIO, where: str, add: _Add, src: SourceScan, config: IngestConfig) -> None:
    with tarfile.open(fileobj=f, mode="r:*") as tf:
        seen = 0
        while True:
            member = tf.next()
            if member is None:
                break
            tf.members.clear()  # type: ignore[attr-defined]  # tarfile keeps every header it has read; 300k empty members would pile up
            seen += 1
            if seen > config.max_archive_members:
                src.reject(where, "too_many_members", f"more than ingest.max_archive_members "
                           f"({config.max_archive_members:,}) members; the rest are not read")
                break
            if member.isdir():
                continue
            kind = "symlink_in_archive" if (member.issym() or member.islnk()) else "not_a_file"
            add(member.name, functools.partial(tf.extractfile, member), member.size, member.isfile(), kind)


def open_source(
    src_url: str, config: IngestConfig, root: str | None = None, scratch_dir: str | None = None
) -> tuple[SourceScan, str]:
    """List a source: its candidate files, label tables and refusals. Returns (source, kind).

    ``scratch_dir`` is the ingest's private temp folder, where archive members are
    unpacked (a temporary one is made when it is not given).
    """
    fs, path = storage.filesystem(src_url)
    try:
        is_dir = bool(fs.isdir(path))
        is_file = not is_dir and bool(fs.isfile(path))
    except Exception as exc:  # network or permission trouble from any backend
        raise IngestError(f"cannot reach source '{src_url}': {exc}") from None
    if storage.is_local(src_url) and not is_dir and os.path.lexists(storage.local_path(src_url).rstrip("/")):
        is_file = True  # a link or a special file: the read below refuses anything that is not a regular file
    if not is_dir and not is_file:
        raise IngestError(f"source '{src_url}' does not exist; expected a folder, archive, CSV or Label Studio export")
    src = SourceScan()
    if scratch_dir is None:
        import tempfile

        scratch_dir = tempfile.mkdtemp(prefix="lineguard-ingest-")
    scratch = _Scratch(scratch_dir, config)
    lower = src_url.lower().rstrip("/")
    if is_dir:
        for rel, url in _walk(src_url, src, config):
            _add_file(rel, url, src, config, scratch)
        return src, "folder"
    if _is_archive(lower):
        _check_source_file(src_url, config.max_archive_bytes, "ingest.max_archive_bytes")
        _read_archive(src_url, "", src, config, scratch)
        if src.rejected and src.rejected[-1]["source_path"] == src_url and not src.entries:
            bad = src.rejected[-1]
            raise IngestError(f"archive '{src_url}' cannot be read: {bad['reason']} ({bad['detail']})")
        return src, "archive"
    if lower.endswith(".csv"):
        src.tables.append(("", _read_limited(src_url, config.max_table_bytes, "ingest.max_table_bytes")))
        return src, f"csv:{root or _parent(src_url)}"
    if lower.endswith(".json"):
        _check_source_file(src_url, config.max_table_bytes, "ingest.max_table_bytes")
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


def _check_source_file(url: str, limit: int, setting: str) -> None:
    """The source file is a regular file within ``limit`` (a FIFO or /dev/zero is refused unread)."""
    try:
        storage.open_read(url, limit).close()
    except storage.TooLargeError as exc:
        raise IngestError(f"{exc} ({setting})") from None
    except storage.StorageError as exc:
        raise IngestError(f"source {exc}") from None


def _read_limited(url: str, limit: int, setting: str) -> bytes:
    try:
        return storage.read_bytes(url, limit)
    except storage.TooLargeError as exc:
        raise IngestError(f"{exc} ({setting})") from None
    except storage.StorageError as exc:
        raise IngestError(f"source {exc}") from None


def _add_file(rel: str, url: str, src: SourceScan, config: IngestConfig, scratch: _Scratch) -> None:
    if _is_archive(rel):
        _read_archive(url, rel, src, config, scratch)
    elif rel.lower().endswith(".csv"):
        try:
            src.tables.append((rel, storage.read_bytes(url, config.max_table_bytes)))
        except storage.TooLargeError as exc:
            src.reject(rel, "file_too_large", f"{exc} (ingest.max_table_bytes)")
        except storage.StorageError as exc:
            src.reject(rel, "unreadable", str(exc))
    else:
        src.entries.append(SourceFile(rel, url=url))


def _add_labelstudio(src_url: str, root: str, src: SourceScan, config: IngestConfig) -> None:
    """Label Studio export: labelled records from :func:`lineguard.labelstudio.parse_export`."""
    from lineguard.labelstudio import KEPT_PROBLEM_KINDS, LabelStudioError, parse_export

    try:
        parsed = parse_export(src_url, root, label_synonyms=config.label_synonyms,
                              positive_class=config.positive_class, max_bytes=config.max_table_bytes,
                              max_depth=config.max_json_depth)
    except LabelStudioError as exc:
        raise IngestError(str(exc)) from None
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
    line_no = 1
    try:
        for line_no, row in enumerate(reader, start=2):
            if not row or not any(c.strip() for c in row):
                continue
            cell = row[cols["path"]] if cols["path"] < len(row) else ""
            rel = safe_relpath(cell)
            if rel is None:
                src.reject(cell.strip()[:200] or f"{name}:{line_no}", "unsafe_path",
                           f"{name or 'CSV'} line {line_no}: absolute path, URL or '..' refused")
                continue
            full = f"{base}/{rel}" if base else rel
            values = {role: row[i].strip() if i < len(row) else "" for role, i in cols.items() if role != "path"}
            rows[full].append(values)
    except csv.Error as exc:  # a NUL byte, an oversized field: the rest of the table cannot be trusted
        src.reject(name or "labels.csv", "bad_csv", f"line {line_no + 1}: {exc}; rows from there on are ignored")
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
