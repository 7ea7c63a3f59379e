"""Every read and write of datasets, runs and bundles goes through here, via fsspec URLs.

A plain path or ``file://`` URL is a local folder (the default); ``s3://``, ``az://``
and ``gs://`` work when the matching fsspec backend is installed (``lineguard[cloud]``).
For S3-compatible servers (MinIO, a test server on 127.0.0.1) set ``AWS_ENDPOINT_URL``
or ``FSSPEC_S3_ENDPOINT_URL``; credentials come from the usual AWS variables.

Writes are atomic where the filesystem allows it: local files are written to a temp
name and renamed; object stores only ever show a complete object.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import Any

from lineguard import LineguardError


class StorageError(LineguardError):
    """A URL cannot be read or written."""


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


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    try:
        with fs.open(path, "rb") as f:
            data = bytes(f.read())
        # Object stores "open" a prefix as an empty file; say what it is instead.
        if not data and not is_local(url) and fs.isdir(path):
            raise IsADirectoryError(path)
        return data
    except FileNotFoundError:
        raise StorageError(f"'{url}' does not exist") from None
    except IsADirectoryError:
        raise StorageError(f"'{url}' is a folder, expected a file") from None
    except PermissionError:
        raise StorageError(f"'{url}': permission denied") from None
    except Exception as exc:  # network or credential errors from any backend
        raise StorageError(f"cannot read '{url}': {exc}") from None


def read_text(url: str) -> str:
    try:
        return read_bytes(url).decode("utf-8")
    except UnicodeDecodeError:
        raise StorageError(f"'{url}' is not UTF-8 text") from None


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole file atomically: readers see the old content or the new, never half."""
    url = str(url)
    if is_local(url):
        path = local_path(url)
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
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
