"""The step cache: a step whose inputs are unchanged is skipped and its recorded output reused.

A step's **key** is the sha256 of its parts, each recorded by name so a miss can say what changed:

- ``code``: the code version, a hash of the ``lineguard`` package's Python sources. A result
  computed by other code is never reused: a fixed preprocessing or threshold bug must not
  survive in a cached model. The price is a full rerun after any code change, which is what an
  upgrade should cost; a per-module dependency list would be cheaper and, once it misses one
  import, silently wrong.
- ``config.<section>``: each config section the step reads (``train`` for training, ...).
- ``input.<name>``: the fingerprint of each input: the content hash of an artefact (a file
  or folder: relative paths and bytes), a dataset version, a run id.

The record (``<workdir>/pipeline/state.json``, a few KB, written atomically) holds per step
its key, parts, output, the output's fingerprint when it was made, and timings; and the step
that failed last, so the next run says where it resumes. A cached output is reused only while
it is still there and unchanged (its fingerprint is recomputed), else the step reruns.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lineguard import LineguardError

SCHEMA = 1
STATE_FILE = "state.json"


class PipelineError(LineguardError):
    """A pipeline step failed, or the pipeline cannot start (bad step name, a run already going)."""


# --- fingerprints ------------------------------------------------------------------------------


def digest(data: Any) -> str:
    """sha256 of ``data`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tree_hash(url: str) -> str | None:
    """Content hash of a file or folder (local or URL); None when it does not exist.

    Local: relative paths and bytes of every file. Object stores: relative paths, sizes and
    the store's own checksum (ETag / md5) -- reading every object back would cost a download.
    """
    from lineguard import storage

    if storage.is_local(url):
        root = Path(storage.local_path(url))
        if root.is_file():
            return _file_sha(root)
        if not root.is_dir():
            return None
        h = hashlib.sha256()
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            h.update(file.relative_to(root).as_posix().encode("utf-8") + b"\0")
            h.update(_file_sha(file).encode("ascii"))
        return h.hexdigest()
    fs, path = storage.filesystem(url)
    try:
        if not fs.exists(path):
            return None
        infos = [fs.info(path)] if fs.isfile(path) else [fs.info(p) for p in sorted(fs.find(path))]
    except Exception as exc:  # network or credential errors from any backend
        raise PipelineError(f"cannot read '{url}' to fingerprint it: {exc}") from None
    keys = ("ETag", "etag", "md5Hash", "md5", "checksum", "size")
    return digest([[str(i.get("name", "")).removeprefix(path), *[str(i.get(k, "")) for k in keys]] for i in infos])


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def code_version() -> str:
    """Hash of the ``lineguard`` package's ``.py`` sources (relative paths and bytes)."""
    package = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode("utf-8") + b"\0" + path.read_bytes())
    return h.hexdigest()


# --- the record --------------------------------------------------------------------------------


@dataclass
class StepRecord:
    """One finished step: what went in (key and parts), what came out, and when."""

    key: str
    parts: dict[str, str]
    output: str
    fingerprint: str
    seconds: float
    finished_at: str

    def changed(self, parts: Mapping[str, str]) -> list[str]:
        """Names of the parts that differ from ``parts`` (added and removed ones too)."""
        return sorted(k for k in set(self.parts) | set(parts) if self.parts.get(k) != parts.get(k))


@dataclass
class StepCache:
    """The pipeline's record under ``<workdir>/pipeline``; every change is written atomically."""

    folder: Path
    steps: dict[str, StepRecord] = field(default_factory=dict)
    failed: dict[str, str] | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, folder: str | Path) -> StepCache:
        """Load the record (a missing one is empty; an unreadable one is set aside and noted)."""
        folder = Path(folder)
        cache = cls(folder)
        path = folder / STATE_FILE
        if not path.is_file():
            return cache
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("schema") != SCHEMA:
                raise ValueError(f"schema {data.get('schema')!r}, expected {SCHEMA}")
            cache.steps = {name: StepRecord(**rec) for name, rec in data.get("steps", {}).items()}
            cache.failed = data.get("failed")
        except (ValueError, TypeError, AttributeError) as exc:
            aside = path.with_name(f"{STATE_FILE}.unreadable-{int(time.time())}")
            os.replace(path, aside)
            cache.notes.append(f"the step record {path} was unreadable ({exc}); moved to {aside.name}, "
                               "every step runs")
            cache.steps, cache.failed = {}, None
        return cache

    def put(self, name: str, record: StepRecord) -> None:
        self.steps[name] = record
        if self.failed and self.failed.get("step") == name:
            self.failed = None
        self.save()

    def drop(self, name: str) -> None:
        if self.steps.pop(name, None) is not None:
            self.save()

    def fail(self, name: str, error: str) -> None:
        self.failed = {"step": name, "error": error[:500], "at": _now()}
        self.save()

    def save(self) -> None:
        from lineguard import storage

        data = {"schema": SCHEMA, "steps": {n: asdict(r) for n, r in self.steps.items()}, "failed": self.failed}
        storage.write_text(str(self.folder / STATE_FILE), json.dumps(data, indent=1, sort_keys=True))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_record(parts: Mapping[str, str], output: str, fingerprint: str, seconds: float) -> StepRecord:
    """A record for a step that just finished."""
    return StepRecord(digest(dict(parts)), dict(parts), output, fingerprint, round(seconds, 2), _now())


@contextlib.contextmanager
def locked(folder: str | Path) -> Iterator[None]:
    """Hold ``<folder>/lock`` for the block: two pipeline runs on one workdir would overwrite each other."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "lock").open("a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(f"another pipeline run is using {folder.parent} (it holds {folder / 'lock'}); "
                                "wait for it or use another workdir") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
