"""Reading an uploaded image off the wire with every bound checked before the bytes pile up.

``POST /v1/predict`` takes the image as the raw request body (``Content-Type: image/*`` or
``application/octet-stream``) or as the ``image`` part of a ``multipart/form-data`` form
(optionally with a ``recipe`` field). :func:`read_upload` streams the body and stops at the
first byte over the limit: a declared ``Content-Length`` over it is refused before anything
is read, a chunked or lying body is cut off at ``max_bytes + 1``. The pixel count is then
checked from the image header by :func:`lineguard.preprocess.decode_image` before any pixel
is decoded (decompression bombs), so a hostile upload costs at most ``max_bytes`` of memory.

Every refusal is an :class:`UploadError` with an HTTP status, a short ``reason`` tag and a
one-line message. Imports the standard library and python-multipart (inside the parser).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from lineguard import LineguardError

__all__ = ["MAX_FIELD_BYTES", "Upload", "UploadError", "read_upload"]

MAX_FIELD_BYTES = 1024  # a text field of the form (the recipe name)
MAX_PARTS = 4
_MULTIPART_OVERHEAD = 16_384  # boundaries and part headers on top of the image itself
RAW_TYPES = ("application/octet-stream",)


class UploadError(LineguardError):
    """An upload refused before or while reading it; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class Upload:
    """The image bytes of one upload and the form's ``recipe`` field, if it had one."""

    data: bytes
    recipe: str | None = None
    filename: str | None = None


def _declared_length(headers: Mapping[str, str]) -> int | None:
    raw = headers.get("content-length")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise UploadError(400, "bad_length", f"Content-Length {raw[:40]!r} is not a number") from None
    if value < 0:
        raise UploadError(400, "bad_length", "Content-Length is negative")
    return value


async def _capped(stream: AsyncIterator[bytes], cap: int) -> AsyncIterator[bytes]:
    """The body's chunks; UploadError 413 as soon as more than ``cap`` bytes arrived."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > cap:
            raise UploadError(413, "too_large", f"upload is over the limit of {cap:,} bytes; send a smaller image")
        if chunk:
            yield chunk


async def read_upload(headers: Mapping[str, str], stream: AsyncIterator[bytes], max_bytes: int) -> Upload:
    """Read one image upload within ``max_bytes`` (see the module docstring); UploadError on any refusal."""
    content_type = headers.get("content-type", "").strip()
    media = content_type.split(";", 1)[0].strip().lower()
    multipart = media == "multipart/form-data"
    if not (multipart or media.startswith("image/") or media in RAW_TYPES or media == ""):
        raise UploadError(415, "unsupported_media_type",
                          f"Content-Type {media[:60]!r} is not accepted; send the image as the body "
                          "(image/* or application/octet-stream) or as the 'image' part of multipart/form-data")
    cap = max_bytes + (_MULTIPART_OVERHEAD if multipart else 0)
    declared = _declared_length(headers)
    if declared is not None and declared > cap:
        raise UploadError(413, "too_large", f"upload of {declared:,} bytes is over the limit of {max_bytes:,} bytes; "
                          "send a smaller image")
    body = _capped(stream, cap)
    if multipart:
        return await _read_multipart(content_type, body, max_bytes)
    data = bytearray()
    async for chunk in body:
        data += chunk
    return Upload(bytes(data))


class _Form:
    """python-multipart callbacks that collect the parts of one form, each bounded as it streams."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.parts: dict[str, bytearray] = {}
        self.filenames: dict[str, str] = {}
        self._header, self._value, self._disposition = b"", b"", b""
        self._name = ""

    def callbacks(self) -> dict[str, object]:
        return {"on_header_field": self.on_header_field, "on_header_value": self.on_header_value,
                "on_header_end": self.on_header_end, "on_headers_finished": self.on_headers_finished,
                "on_part_data": self.on_part_data}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, opts = parse_options_header(self._disposition)
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        if len(self.parts) >= MAX_PARTS:
            raise UploadError(400, "bad_multipart", f"the form has more than {MAX_PARTS} parts; send 'image' and "
                              "optionally 'recipe'")
        if name in self.parts:
            raise UploadError(400, "bad_multipart", f"the form has the part {name[:40]!r} twice")
        self.parts[name] = bytearray()
        if b"filename" in opts:
            self.filenames[name] = opts[b"filename"].decode("utf-8", "replace")
        self._name, self._disposition = name, b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        buf = self.parts[self._name]
        limit = self.max_bytes if self._name == "image" else MAX_FIELD_BYTES
        if len(buf) + (end - start) > limit:
            raise UploadError(413, "too_large", f"form part {self._name[:40]!r} is over the limit of {limit:,} bytes")
        buf += data[start:end]


async def _read_multipart(content_type: str, body: AsyncIterator[bytes], max_bytes: int) -> Upload:
    """The ``image`` part (and ``recipe`` field) of a multipart form."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError(400, "bad_multipart", "multipart/form-data without a boundary in its Content-Type")
    form = _Form(max_bytes)
    parser = MultipartParser(boundary, form.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadError(400, "bad_multipart", f"malformed multipart/form-data: {str(exc)[:200]}") from None
    if "image" not in form.parts:
        raise UploadError(400, "no_image", "the form has no 'image' part; send the image file as the part named 'image'")
    recipe = None
    if "recipe" in form.parts:
        try:
            recipe = bytes(form.parts["recipe"]).decode("utf-8").strip() or None
        except UnicodeDecodeError:
            raise UploadError(400, "bad_recipe", "the form's 'recipe' field is not UTF-8 text") from None
    return Upload(bytes(form.parts["image"]), recipe, form.filenames.get("image"))
