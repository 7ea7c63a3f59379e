"""Local storage through fsspec: atomic writes, walking, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from lineguard import storage


def test_atomic_write_read_and_walk(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.bin"
    storage.write_bytes(str(target), b"one")
    storage.write_bytes(str(target), b"two")
    assert storage.read_bytes(str(target)) == b"two"
    assert storage.read_bytes(f"file://{target}") == b"two"
    storage.write_text(storage.join(str(tmp_path), "c", "d.txt"), "hi")
    assert list(storage.walk_files(str(tmp_path))) == ["a/b.bin", "c/d.txt"]
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_errors_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(storage.StorageError, match="does not exist"):
        storage.read_bytes(str(tmp_path / "missing"))
    with pytest.raises(storage.StorageError, match="does not exist"):
        list(storage.walk_files(str(tmp_path / "missing")))
    with pytest.raises(storage.StorageError, match=r"no filesystem|cannot open"):
        storage.filesystem("nosuchproto://bucket/key")
