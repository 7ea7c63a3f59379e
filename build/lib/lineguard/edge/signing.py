"""Bundle integrity, digests and ed25519 signatures: only trusted models load (TARGETS R4).

Three layers, each covering everything the layer below covers:

- ``files`` in bundle.json: the sha256 of every file in the bundle (the model included).
- ``integrity`` in bundle.json: the sha256 of bundle.json's canonical content (every key
  but ``integrity``, sorted, compact UTF-8 JSON). It catches any edit of thresholds,
  classes, preprocessing or the parity tolerance. Its value, written ``sha256:<hex>``,
  is **the bundle digest**: one string that pins the whole bundle, for a registry, a
  deployment config (``trust.digest``) or the runtime (``load_bundle(expected_digest=)``).
- ``bundle.sig.json``: an ed25519 signature over the digest by a key the edge trusts.
  The integrity digest alone stops accidents, not an attacker (anyone can recompute a
  hash); a signature stops both. With trusted keys configured, an unsigned or wrongly
  signed bundle is refused, with no fallback.

Why ed25519 through ``cryptography`` rather than the OpenSSF ``model-signing`` package:
model-signing brings the Sigstore stack (sigstore, in-toto, protobuf specs, TUF, …, about
20 packages) and is built around keyless signing that needs Fulcio and Rekor on the
network; the edge runs offline on a Raspberry-Pi-class budget. We keep its model: a
manifest of file digests (our ``files``) and a detached signature over it, with a
domain-separated payload; one small, widely packaged dependency, imported only when
signing or when keys are configured. See docs/deployment.md ("Signing bundles").
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lineguard import LineguardError

SIGNATURE_FILE = "bundle.sig.json"
SIGNATURE_FORMAT = "lineguard-bundle-signature/1"
INTEGRITY_KEY = "integrity"
_PAYLOAD_PREFIX = b"lineguard-bundle-signature-v1\n"  # domain separation: this key signs bundle digests only
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
MAX_SIGNATURE_BYTES = 16_384


class SigningError(LineguardError):
    """A key or a signature cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Trust:
    """What the edge accepts: bundles signed by one of ``keys`` (PEM public key files), and/or one ``digest``.

    An empty ``Trust()`` accepts any bundle whose hashes and integrity digest hold.
    """

    keys: tuple[str, ...] = ()
    digest: str | None = None
    _public: tuple[Any, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.digest is not None and not _DIGEST.fullmatch(self.digest):
            raise SigningError(f"trusted digest {self.digest!r} must look like sha256:<64 lower-case hex digits>")
        if self.keys and not self._public:
            object.__setattr__(self, "_public", tuple(load_public_key(k) for k in self.keys))

    @property
    def requires_signature(self) -> bool:
        return bool(self.keys)


def canonical_bytes(meta: Mapping[str, Any]) -> bytes:
    """bundle.json's content as signed and hashed: every key but ``integrity``, sorted, compact UTF-8."""
    body = {k: v for k, v in meta.items() if k != INTEGRITY_KEY}
    try:
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise SigningError(f"bundle.json cannot be put in canonical form: {exc}") from None


def integrity_block(meta: Mapping[str, Any]) -> dict[str, str]:
    """The ``integrity`` block to store in bundle.json for this content."""
    return {"algorithm": "sha256", "canonical": "json-sorted-compact-utf8",
            "digest": "sha256:" + hashlib.sha256(canonical_bytes(meta)).hexdigest()}


def check_integrity(meta: Mapping[str, Any]) -> str:
    """The bundle digest (``sha256:<hex>``) after checking bundle.json against its ``integrity`` block."""
    block = meta.get(INTEGRITY_KEY)
    if not isinstance(block, Mapping) or not isinstance(block.get("digest"), str):
        raise SigningError("bundle.json has no integrity digest; re-export the bundle with this LineGuard")
    if block.get("algorithm") != "sha256" or block.get("canonical") != "json-sorted-compact-utf8":
        raise SigningError(f"bundle.json integrity uses {block.get('algorithm')!r}/{block.get('canonical')!r}; "
                           "this LineGuard checks sha256/json-sorted-compact-utf8")
    expected = integrity_block(meta)["digest"]
    if block["digest"] != expected:
        raise SigningError(
            f"bundle.json was edited after export: its content hashes to {expected[:23]}..., its integrity "
            f"block says {str(block['digest'])[:23]}...; refused"
        )
    return expected


# --- keys ---------------------------------------------------------------------------------------------


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SigningError(
            "signing and trusted keys need the cryptography package: pip install 'lineguard[edge]'"
        ) from None
    return ed25519


def key_id(public_key: Any) -> str:
    """``sha256:<hex>`` of the raw 32-byte public key: how a signature names its key."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _read_key_file(path: str | Path) -> bytes:
    p = Path(path)
    try:
        if not p.is_file():
            raise SigningError(f"key file '{p}' does not exist or is not a regular file")
        if p.stat().st_size > 16_384:
            raise SigningError(f"key file '{p}' is too large to be a PEM key")
        return p.read_bytes()
    except OSError as exc:
        raise SigningError(f"key file '{p}' cannot be read: {exc.strerror or exc}") from None


def load_public_key(path: str | Path) -> Any:
    """An ed25519 public key from a PEM file; SigningError names the file when it is anything else."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    data = _read_key_file(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"'{path}' is not a PEM public key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SigningError(f"'{path}' is a {type(key).__name__}; LineGuard trusts ed25519 keys only")
    return key


def load_private_key(path: str | Path) -> Any:
    """An ed25519 private key from an unencrypted PEM file (keep it off the edge)."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise SigningError(f"'{path}' is encrypted; give an unencrypted PEM private key") from None
    except ValueError as exc:
        raise SigningError(f"'{path}' is not a PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningError(f"'{path}' is a {type(key).__name__}; LineGuard signs with ed25519 keys only")
    return key


def generate_keypair(private_out: str | Path, public_out: str | Path | None = None) -> tuple[Path, Path]:
    """Write a new ed25519 key pair as PEM files (the private one readable by its owner only)."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    private_out = Path(private_out)
    public_out = Path(public_out) if public_out is not None else private_out.with_name(private_out.name + ".pub")
    for p in (private_out, public_out):
        if p.exists():
            raise SigningError(f"'{p}' already exists; keys are never overwritten")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    private_out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_out.parent.mkdir(parents=True, exist_ok=True)
    with open(public_out, "xb") as f:
        f.write(public_pem)
    return private_out, public_out


# --- signatures ------------------------------------------------------------------------------------


def signature_document(digest: str, private_key_path: str | Path) -> dict[str, Any]:
    """The content of bundle.sig.json: an ed25519 signature over the bundle digest."""
    if not _DIGEST.fullmatch(digest):
        raise SigningError(f"bundle digest {digest!r} is not sha256:<hex>")
    key = load_private_key(private_key_path)
    signature = key.sign(_PAYLOAD_PREFIX + digest.encode())
    return {
        "format": SIGNATURE_FORMAT, "algorithm": "ed25519", "digest": digest,
        "key_id": key_id(key.public_key()), "signature": base64.b64encode(signature).decode(),
        "signed_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def read_signature(folder: Path) -> dict[str, Any] | None:
    """bundle.sig.json of a bundle folder, or None when the bundle is unsigned."""
    path = folder / SIGNATURE_FILE
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_file():
        raise SigningError(f"{SIGNATURE_FILE} is not a regular file; refused")
    if path.stat().st_size > MAX_SIGNATURE_BYTES:
        raise SigningError(f"{SIGNATURE_FILE} is larger than {MAX_SIGNATURE_BYTES:,} bytes; refused")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SigningError(f"{SIGNATURE_FILE} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise SigningError(f"{SIGNATURE_FILE} must hold a JSON object")
    return doc


def verify_signature(doc: Mapping[str, Any] | None, digest: str, trust: Trust) -> str | None:
    """The key id that signed ``digest``, checked against ``trust``; None when no keys are configured.

    With keys configured, a missing signature, another format, another digest, a key not
    trusted or a signature that does not verify is a :class:`SigningError`: no fallback.
    """
    if not trust.requires_signature:
        return None
    if doc is None:
        raise SigningError(f"bundle is not signed ({SIGNATURE_FILE} missing) and trusted keys are configured; refused")
    if doc.get("format") != SIGNATURE_FORMAT or doc.get("algorithm") != "ed25519":
        raise SigningError(f"{SIGNATURE_FILE} is {doc.get('format')!r}/{doc.get('algorithm')!r}; "
                           f"expected {SIGNATURE_FORMAT}/ed25519")
    if doc.get("digest") != digest:
        raise SigningError(f"{SIGNATURE_FILE} signs another bundle ({str(doc.get('digest'))[:23]}...), "
                           f"not this one ({digest[:23]}...); refused")
    try:
        signature = base64.b64decode(str(doc.get("signature", "")), validate=True)
    except ValueError:
        raise SigningError(f"{SIGNATURE_FILE}: signature is not base64") from None
    from cryptography.exceptions import InvalidSignature

    for public in trust._public:
        if key_id(public) != doc.get("key_id"):
            continue
        try:
            public.verify(signature, _PAYLOAD_PREFIX + digest.encode())
        except InvalidSignature:
            raise SigningError(f"the signature in {SIGNATURE_FILE} does not verify with trusted key "
                               f"{str(doc.get('key_id'))[:23]}...; the bundle or its signature was altered") from None
        return str(doc["key_id"])
    raise SigningError(f"{SIGNATURE_FILE} is signed by key {str(doc.get('key_id'))[:23]}..., which is not one of the "
                       f"{len(trust._public)} trusted key(s); refused")


def trust_from(keys: Iterable[str | Path] = (), digest: str | None = None) -> Trust:
    """A :class:`Trust` from key file paths and an optional pinned digest (what the CLI and config give)."""
    return Trust(keys=tuple(str(k) for k in keys), digest=digest)
