"""Every read and write of datasets, runs and bundles goes through here, via fsspec URLs.

A plain path or ``file://`` URL is a local folder (the default); ``s3://``, ``az://``
and ``gs://`` work when the matching fsspec backend is installed (``lineguard[cloud]``).
For S3-compatible servers (MinIO, a test server on 127.0.0.1) set ``AWS_ENDPOINT_URL``
or ``FSSPEC_S3_ENDPOINT_URL``; credentials come from the usual AWS variables.

Writes are atomic where the filesystem allows it: local files are written to a temp
name and renamed; object stores only ever show a complete object.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO

from lineguard import LineguardError


class StorageError(LineguardError):
    """A URL cannot be read or written."""


class TooLargeError(StorageError):
    """A file is larger than the limit it is read under (checked before reading it)."""


class NotAFileError(StorageError):
    """A local path is a FIFO, device, socket or folder where a regular file is expected."""


def _storage_options(protocol: str) -> dict[str, Any]:
    if protocol in ("s3", "s3a"):
        # No listings cache: another process (the edge's sync, a second ingest) may write or
        # delete objects at any time, and a cached listing would make exists() answer wrongly.
        options: dict[str, Any] = {"use_listings_cache": False}
        endpoint = os.environ.get("FSSPEC_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        return options
    return {}


_BACKENDS = {
    "s3": "s3fs (pip install 'lineguard[cloud]')",
    "s3a": "s3fs (pip install 'lineguard[cloud]')",
    "gs": "gcsfs (pip install gcsfs)",
    "gcs": "gcsfs (pip install gcsfs)",
    "az": "adlfs (pip install adlfs)",
    "abfs": "adlfs (pip install adlfs)",
    "abfss": "adlfs (pip install adlfs)",
}


def is_local(url: str) -> bool:
    """True for plain paths and ``file://`` URLs."""
    return "://" not in str(url) or str(url).startswith("file://")


def local_path(url: str) -> str:
    """A local filesystem path for a local URL (raises for remote ones)."""
    url = str(url)
    if not is_local(url):
        raise StorageError(f"'{url}' is not a local path")
    return url[len("file://") :] if url.startswith("file://") else url


def filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path within it)`` for a URL or a local path."""
    import fsspec
    from fsspec.core import split_protocol

    url = str(url)
    protocol, _ = split_protocol(url)
    protocol = protocol or "file"
    try:
        fs, path = fsspec.core.url_to_fs(url, **_storage_options(protocol))
    except ImportError:
        package = _BACKENDS.get(protocol, f"the fsspec backend for '{protocol}'")
        raise StorageError(f"'{url}' needs {package}, which is not installed") from None
    except ValueError as exc:
        raise StorageError(f"cannot open '{url}': {exc}") from None
    return fs, path


def join(base: str, *parts: str) -> str:
    """Join URL or path parts with '/' (works for local paths and object-store URLs)."""
    base = str(base)
    if is_local(base):
        return os.path.join(local_path(base), *parts)
    return posixpath.join(base.rstrip("/"), *parts)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    try:
        return bool(fs.exists(path))
    except Exception as exc:  # network errors, permission errors from any backend
        raise StorageError(f"cannot reach '{url}': {exc}") from None


def _open_local_regular(path: str, max_bytes: int | None, url: str) -> BinaryIO:
    """Open a local regular file for reading, refusing FIFOs, devices, sockets and oversized files.

    The checks run on the opened descriptor (``O_NONBLOCK``, so a FIFO swapped in after
    a first look cannot hang the open), so a symlink to ``/dev/zero`` or a named pipe is
    refused, never read.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise StorageError(f"'{url}' does not exist") from None
    except OSError as exc:
        raise StorageError(f"cannot read '{url}': {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise NotAFileError(f"'{url}' is a folder, expected a file")
    if not stat.S_ISREG(st.st_mode):
        raise NotAFileError(f"'{url}' is not a regular file (a FIFO, device or socket); refused")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except PermissionError:
        raise StorageError(f"'{url}': permission denied") from None
    except OSError as exc:
        raise StorageError(f"cannot read '{url}': {exc.strerror or exc}") from None
    f = os.fdopen(fd, "rb")
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):
        f.close()
        raise NotAFileError(f"'{url}' is not a regular file; refused")
    if max_bytes is not None and st.st_size > max_bytes:
        f.close()
        raise TooLargeError(f"'{url}' is {st.st_size:,} bytes, over the limit of {max_bytes:,}")
    return f


def open_read(url: str, max_bytes: int | None = None) -> BinaryIO:
    """A binary file object for streaming a file (archives); local files must be regular files.

    ``max_bytes`` refuses a larger file before anything is read (:class:`TooLargeError`).
    """
    url = str(url)
    if is_local(url):
        return _open_local_regular(local_path(url), max_bytes, url)
    fs, path = filesystem(url)
    try:
        size = fs.size(path)
        if max_bytes is not None and size is not None and size > max_bytes:
            raise TooLargeError(f"'{url}' is {size:,} bytes, over the limit of {max_bytes:,}")
        return fs.open(path, "rb")  # type: ignore[no-any-return]
    except StorageError:
        raise
    except FileNotFoundError:
        raise StorageError(f"'{url}' does not exist") from None
    except Exception as exc:  # network or credential errors from any backend
        raise StorageError(f"cannot read '{url}': {exc}") from None


def read_bytes(url: str, max_bytes: int | None = None) -> bytes:
    """The whole content of a file. With ``max_bytes``, a larger file is refused before it is read.

    Local paths must be regular files (never a FIFO or device); at most ``max_bytes + 1``
    bytes are ever read, so a file that grows or lies about its size cannot exhaust memory.
    """
    url = str(url)
    limit = -1 if max_bytes is None else max_bytes + 1
    if is_local(url):
        with _open_local_regular(local_path(url), max_bytes, url) as f:
            try:
                data = f.read(limit)
            except OSError as exc:
                raise StorageError(f"cannot read '{url}': {exc.strerror or exc}") from None
        if max_bytes is not None and len(data) > max_bytes:
            raise TooLargeError(f"'{url}' is over the limit of {max_bytes:,} bytes")
        return data
    fs, path = filesystem(url)
    try:
        if max_bytes is not None:
            size = fs.size(path)
            if size is not None and size > max_bytes:
                raise TooLargeError(f"'{url}' is {size:,} bytes, over the limit of {max_bytes:,}")
        with fs.open(path, "rb") as f:
            data = bytes(f.read(limit))
        if max_bytes is not None and len(data) > max_bytes:
            raise TooLargeError(f"'{url}' is over the limit of {max_bytes:,} bytes")
        # Object stores "open" a prefix as an empty file; say what it is instead.
        if not data and not is_local(url) and fs.isdir(path):
            raise IsADirectoryError(path)
        return data
    except StorageError:
        raise
    except FileNotFoundError:
        raise StorageError(f"'{url}' does not exist") from None
    except IsADirectoryError:
        raise StorageError(f"'{url}' is a folder, expected a file") from None
    except PermissionError:
        raise StorageError(f"'{url}': permission denied") from None
    except Exception as exc:  # network or credential errors from any backend
        raise StorageError(f"cannot read '{url}': {exc}") from None


def read_text(url: str, max_bytes: int | None = None) -> str:
    try:
        return read_bytes(url, max_bytes).decode("utf-8")
    except UnicodeDecodeError:
        raise StorageError(f"'{url}' is not UTF-8 text") from None


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole file atomically: readers see the old content or the new, never half."""
    url = str(url)
    if is_local(url):
        path = local_path(url)
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = partial_name(path, "tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    fs, path = filesystem(url)
    try:
        fs.pipe_file(path, data)  # a single PUT: the object appears whole or not at all
    except Exception as exc:
        raise StorageError(f"cannot write '{url}': {exc}") from None


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def makedirs(url: str) -> None:
    fs, path = filesystem(url)
    fs.makedirs(path, exist_ok=True)


def walk_files(url: str) -> Iterator[str]:
    """Every file below ``url`` as a path relative to it (POSIX separators), sorted."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    try:
        if not fs.exists(root):
            raise FileNotFoundError(root)
        found = fs.find(root)
    except FileNotFoundError:
        raise StorageError(f"'{url}' does not exist") from None
    except Exception as exc:  # network or credential errors from any backend
        raise StorageError(f"cannot list '{url}': {exc}") from None
    for full in sorted(found):
        rel = posixpath.relpath(str(full).replace(os.sep, "/"), root.replace(os.sep, "/"))
        if rel != ".":
            yield rel


def remove(url: str, recursive: bool = False) -> None:
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


# --- private work folders and what an interrupted run left behind ---------------------------------

_PARTIAL_MARK = ".lg"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except OSError:
        return False
    return True


def partial_name(target: str, suffix: str = "partial") -> str:
    """A sibling temp name for ``target``: ``.<name>.lg<pid>-<hex>.<suffix>``.

    The pid in the name lets a later run tell the leftovers of a killed run (its pid is
    gone) from the work of a run still going, so :func:`remove_stale` can clean them.
    """
    parent, name = os.path.split(os.path.abspath(target))
    return os.path.join(parent, f".{name}{_PARTIAL_MARK}{os.getpid()}-{uuid.uuid4().hex[:12]}.{suffix}")


def remove_stale(target: str) -> list[str]:
    """Remove the temp siblings of ``target`` (see :func:`partial_name`) left by runs that are dead.

    Only names LineGuard made (``.<name>.lg<pid>-<hex>.partial`` / ``.old`` / ``.tmp``)
    whose pid is no longer running are touched. Returns what was removed.
    """
    import re
    import shutil

    parent, name = os.path.split(os.path.abspath(target))
    pattern = re.compile(re.escape(f".{name}{_PARTIAL_MARK}") + r"(\d+)-[0-9a-f]{12}\.(partial|old|tmp)$")
    removed: list[str] = []
    try:
        siblings = os.listdir(parent)
    except OSError:
        return removed
    for entry in siblings:
        m = pattern.match(entry)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        full = os.path.join(parent, entry)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(full)
        removed.append(full)
    return removed


def work_dir(kind: str) -> str:
    """A new private temp folder ``lineguard-<kind>-<pid>-…`` (the system temp folder).

    Folders of the same kind left by dead processes (``kill -9``) are removed first, so
    an interrupted run never leaves its scratch behind for long.
    """
    import re
    import shutil
    import tempfile

    base = tempfile.gettempdir()
    pattern = re.compile(rf"lineguard-{re.escape(kind)}-(\d+)-")
    with contextlib.suppress(OSError):
        for entry in os.listdir(base):
            m = pattern.match(entry)
            full = os.path.join(base, entry)
            if m and not _pid_alive(int(m.group(1))) and os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"lineguard-{kind}-{os.getpid()}-", dir=base)
