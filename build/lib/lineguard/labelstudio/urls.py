"""Image URLs in Label Studio tasks -> files under a root, or refused (TARGETS R3).

An export is untrusted input: anyone who can edit a project can put any URL in a task.
:func:`resolve_image_url` names a file under the root or raises; ``..``, absolute
paths, percent-encoded (even twice) traversal, NUL bytes, symlinks that leave the root
and URLs on other hosts or buckets never resolve.
"""

from __future__ import annotations

import base64
import binascii
import os
import posixpath
import re
from urllib.parse import parse_qs, unquote, urlsplit

from lineguard import storage
from lineguard.labelstudio.format import LOCAL_FILES_PATH, UPLOAD_PATH


class UnresolvableImage(Exception):
    """An image URL that does not map to a file under the root; ``kind`` is a problem kind."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def _is_traversal(path: str) -> str | None:
    """Why a relative path is hostile (absolute, '..', NUL), or None when it is a plain relative path."""
    p = path.replace("\\", "/")
    if "\x00" in p:
        return "contains a NUL byte"
    if p.startswith("/") or p.startswith("~") or re.match(r"^[A-Za-z]:", p):
        return "is an absolute path"
    if any(seg == ".." for seg in p.split("/")):
        return "climbs out with '..'"
    return None


def _check_relative(path: str) -> str:
    """A clean relative POSIX path, or UnresolvableImage('outside_root') — also after extra decoding."""
    if not path:
        raise UnresolvableImage("unresolvable", "empty file path")
    decoded = path
    for _ in range(3):  # %252e%252e -> %2e%2e -> ..: an attacker may encode more than once
        reason = _is_traversal(decoded)
        if reason:
            raise UnresolvableImage("outside_root", f"path '{path}' {reason}")
        nxt = unquote(decoded)
        if nxt == decoded:
            break
        decoded = nxt
    clean = posixpath.normpath(path.replace("\\", "/"))
    if clean in (".", "") or clean.startswith("../"):
        raise UnresolvableImage("outside_root", f"path '{path}' does not name a file under the root")
    return clean


def _under_local_root(rel: str, base: str, root_real: str) -> str:
    """``rel`` (relative to ``base``) as a path relative to ``root_real``, following symlinks."""
    real = os.path.realpath(os.path.join(base, rel))
    try:
        inside = os.path.commonpath([real, root_real]) == root_real
    except ValueError:  # different drives
        inside = False
    if not inside:
        raise UnresolvableImage(
            "outside_root", f"'{rel}' resolves to '{real}', outside the root '{root_real}'"
        )
    if not os.path.isfile(real):
        raise UnresolvableImage("missing_file", f"'{rel}' is not a file under the root")
    # The path as named (a symlink inside the root keeps its own name), not its target.
    named = os.path.normpath(os.path.join(base, rel))
    if os.path.commonpath([named, root_real]) != root_real:
        raise UnresolvableImage("outside_root", f"'{rel}' is outside the root '{root_real}'")
    return os.path.relpath(named, root_real).replace(os.sep, "/")


def resolve_image_url(url: str, root: str, local_files_root: str | None = None) -> str:
    """The path, relative to ``root``, of the file an image URL in a Label Studio task points at.

    Understands ``/data/local-files/?d=REL`` (REL relative to ``local_files_root``,
    default ``root``), ``/data/upload/PROJECT/FILE`` (Label Studio's media folder as
    ``root``), presigned ``/tasks/N/presign/?fileuri=…``, plain relative paths, and
    ``s3://``/``gs://``/``http(s)://`` URLs that lie under a ``root`` of the same kind.
    Raises :class:`UnresolvableImage` (kind ``outside_root``, ``unresolvable`` or
    ``missing_file``) for everything else; nothing outside ``root`` is ever returned.
    """
    url = str(url).strip()
    root = str(root).rstrip("/") or "/"
    if not url:
        raise UnresolvableImage("no_image", "empty image URL")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    root_local = storage.is_local(root)

    if scheme in ("http", "https") and (
        parts.path.startswith((LOCAL_FILES_PATH.rstrip("/"), UPLOAD_PATH)) or "/presign" in parts.path
    ):
        # A Label Studio server URL with its host: the path and query are what matter.
        return resolve_image_url(
            parts.path + ("?" + parts.query if parts.query else ""), root, local_files_root
        )

    if not scheme and "/presign" in parts.path:
        fileuri = parse_qs(parts.query).get("fileuri", [""])[0]
        try:
            inner = base64.b64decode(fileuri + "=" * (-len(fileuri) % 4), validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise UnresolvableImage(
                "unresolvable", f"presigned URL '{url}' has an unreadable fileuri"
            ) from None
        if "/presign" in inner:
            raise UnresolvableImage("unresolvable", f"nested presigned URL '{url}'")
        return resolve_image_url(inner, root, local_files_root)

    if not scheme and parts.path.rstrip("/") == LOCAL_FILES_PATH.rstrip("/"):
        values = parse_qs(parts.query, keep_blank_values=True).get("d", [])
        if len(values) != 1:
            raise UnresolvableImage(
                "unresolvable", f"local-files URL '{url}' needs exactly one ?d= parameter"
            )
        rel = _check_relative(values[0])
        if not root_local:
            if local_files_root:
                raise UnresolvableImage("unresolvable", "local-files URLs need a local root")
            return _remote_under(storage.join(root, rel), root)
        root_real = os.path.realpath(storage.local_path(root))
        base = os.path.realpath(local_files_root) if local_files_root else root_real
        return _under_local_root(rel, base, root_real)

    if not scheme and parts.path.startswith(UPLOAD_PATH):
        rel = _check_relative(unquote(parts.path[len("/data/") :]))
        if not root_local:
            raise UnresolvableImage(
                "unresolvable", f"upload URL '{url}' needs a local root (Label Studio's media folder)"
            )
        root_real = os.path.realpath(storage.local_path(root))
        try:
            return _under_local_root(rel, root_real, root_real)
        except UnresolvableImage as exc:
            if exc.kind == "missing_file":
                raise UnresolvableImage(
                    "unresolvable",
                    f"'{url}' was uploaded into Label Studio, not served from the root; pass Label Studio's "
                    "media folder as the root, or serve the images as local files",
                ) from None
            raise

    if scheme == "file":
        raise UnresolvableImage(
            "outside_root", f"'{url}' is an absolute file URL; expected a path under the root"
        )

    if scheme:
        if len(scheme) == 1:  # C:\... read as a URL scheme
            raise UnresolvableImage("outside_root", f"'{url}' is an absolute path")
        return _remote_under(url, root)

    # A plain path, relative to the root.
    rel = _check_relative(url)
    if not root_local:
        return _remote_under(storage.join(root, rel), root)
    root_real = os.path.realpath(storage.local_path(root))
    return _under_local_root(rel, root_real, root_real)


def _remote_under(url: str, root: str) -> str:
    """Relative path of a URL that must lie under a remote root (same scheme, host/bucket and prefix)."""
    if storage.is_local(root):
        raise UnresolvableImage(
            "unresolvable", f"'{url}' is a remote URL; the root '{root}' is a local folder"
        )
    u, r = urlsplit(url), urlsplit(root)
    if (u.scheme.lower(), u.netloc.lower()) != (r.scheme.lower(), r.netloc.lower()):
        raise UnresolvableImage("unresolvable", f"'{url}' is not under the root '{root}'")
    prefix = r.path.rstrip("/") + "/"
    if not u.path.startswith(prefix) or u.query or u.fragment:
        raise UnresolvableImage("unresolvable", f"'{url}' is not under the root '{root}'")
    rel = _check_relative(u.path[len(prefix) :])
    if not storage.exists(storage.join(root, rel)):
        raise UnresolvableImage("missing_file", f"'{url}' does not exist")
    return rel
