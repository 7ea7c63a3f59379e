"""Decode, verify, normalise and hash every file (in a small process pool), and find near duplicates.

The output order never depends on the pool: results are collected in submission order.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from lineguard import storage
from lineguard.config import IngestConfig
from lineguard.ingest.sources import SourceFile, SourceScan
from lineguard.preprocess import ImageDecodeError, decode_image

_POOL_MIN_FILES = 256  # below this a process pool costs more than it saves
_CHUNK = 32
_CHUNK_BYTES = 32_000_000  # a chunk of full-size photos must not hold gigabytes


@functools.cache
def _dct_matrix(n: int = 32) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m.astype(np.float32)


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit pHash of an RGB uint8 image, in numpy: the 8x8 lowest frequencies of a 32x32
    greyscale DCT, each bit "above the median of the other 63" (robust to re-encoding and resizing).
    """
    from PIL import Image

    grey = Image.fromarray(image).convert("L")
    g32 = np.asarray(grey.resize((32, 32), Image.Resampling.BOX), dtype=np.float32)
    dct = _dct_matrix()
    low = (dct @ g32 @ dct.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def thumbnail(image: np.ndarray) -> np.ndarray:
    """16x16 colour thumbnail (uint8, 768 values) that confirms a near-duplicate candidate."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((16, 16), Image.Resampling.BOX), dtype=np.uint8).ravel()


def _process_one(data: bytes, max_pixels: int) -> tuple[Any, ...]:
    from lineguard.manifest import encode_png, image_id_of

    try:
        image = decode_image(data, max_pixels)
    except ImageDecodeError as exc:
        return ("error", exc.reason, str(exc))
    png = encode_png(image)
    return ("ok", image_id_of(png), png, int(image.shape[1]), int(image.shape[0]), perceptual_hash(image),
            thumbnail(image))


def _process_chunk(items: list[bytes], max_pixels: int) -> list[tuple[Any, ...]]:
    return [_process_one(d, max_pixels) for d in items]


def exit_with_parent(parent_pid: int) -> None:
    """Pool-worker initializer: end this worker as soon as the ingest that started it is gone.

    A worker blocked on its task queue outlives a parent killed with ``kill -9`` (the
    pool's own shutdown never runs), so the kernel is asked to signal it when the parent
    dies (Linux ``PR_SET_PDEATHSIG``), and a daemon thread polls the parent as a portable
    fallback.
    """
    import os
    import signal
    import sys
    import threading
    import time

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, name="lineguard-parent-watch", daemon=True).start()


def decode_all(
    entries: list[SourceFile], config: IngestConfig, src: SourceScan, on_step: Callable[[int], None]
) -> list[tuple[SourceFile, tuple[Any, ...]]]:
    """Read, decode, normalise and hash every entry, in order (deterministic with or without a pool).

    Memory stays bounded: a file over ``ingest.max_file_bytes`` (or not a regular file)
    is refused before it is read, work goes out in chunks of at most ``_CHUNK`` files or
    ``_CHUNK_BYTES``, and only a few chunks are in flight at once.
    """

    def load(entry: SourceFile) -> bytes | None:
        try:
            return storage.read_bytes(entry.url, config.max_file_bytes)
        except storage.TooLargeError as exc:
            src.reject(entry.source_path, "file_too_large", f"{exc} (ingest.max_file_bytes)")
        except storage.NotAFileError as exc:
            src.reject(entry.source_path, "not_a_file", str(exc))
        except storage.StorageError as exc:
            src.reject(entry.source_path, "unreadable", str(exc))
        return None

    def chunks() -> Iterator[tuple[list[SourceFile], list[bytes]]]:
        batch_e: list[SourceFile] = []
        batch_d: list[bytes] = []
        size = 0
        for entry in entries:
            data = load(entry)
            if data is None:
                on_step(1)
                continue
            batch_e.append(entry)
            batch_d.append(data)
            size += len(data)
            if len(batch_e) == _CHUNK or size >= _CHUNK_BYTES:
                yield batch_e, batch_d
                batch_e, batch_d, size = [], [], 0
        if batch_e:
            yield batch_e, batch_d

    results: list[tuple[SourceFile, tuple[Any, ...]]] = []
    if config.workers < 2 or len(entries) < _POOL_MIN_FILES:
        for batch_e, batch_d in chunks():
            results.extend(zip(batch_e, _process_chunk(batch_d, config.max_pixels), strict=True))
            on_step(len(batch_e))
        return results

    import multiprocessing
    import os
    from concurrent.futures import Future, ProcessPoolExecutor

    pending: deque[tuple[list[SourceFile], Future[list[tuple[Any, ...]]]]] = deque()
    with ProcessPoolExecutor(
        config.workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=exit_with_parent, initargs=(os.getpid(),),
    ) as pool:
        for batch_e, batch_d in chunks():
            pending.append((batch_e, pool.submit(_process_chunk, batch_d, config.max_pixels)))
            while len(pending) >= 2 * config.workers:  # bounded: never the whole source in memory
                done_e, fut = pending.popleft()
                results.extend(zip(done_e, fut.result(), strict=True))
                on_step(len(done_e))
        while pending:
            done_e, fut = pending.popleft()
            results.extend(zip(done_e, fut.result(), strict=True))
            on_step(len(done_e))
    return results


def near_duplicate_groups(
    hashes: list[int], max_bits: int, thumbs: np.ndarray | None = None, max_diff: float = float("inf")
) -> list[int]:
    """Group near duplicates: per item, the index of its group's first item.

    Two items are near duplicates when their 64-bit perceptual hashes differ in at most
    ``max_bits`` bits and (when ``thumbs`` is given, one row per item) their colour
    thumbnails differ by at most ``max_diff`` grey levels on average; groups are the
    connected components. The thumbnail check matters: photos from a fixed line camera
    share their composition, so a 64-bit hash alone chains distinct items into giant
    groups. Two hashes within ``max_bits`` agree exactly on one of ``max_bits + 1`` bands
    (pigeonhole), so only items sharing a band value are compared, row by row in numpy,
    and pairs already in one group are never checked again.
    """
    n = len(hashes)
    comp = np.arange(n)
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    h = np.array([x & (2**64 - 1) for x in hashes], dtype=np.uint64)
    t = None if thumbs is None else np.asarray(thumbs, dtype=np.int16)
    edges = np.linspace(0, 64, max_bits + 2).astype(int)
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        if hi <= lo or n < 2:
            continue
        keys = (h >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        lengths = np.diff(np.r_[starts, n])
        for start, length in zip(starts[lengths > 1].tolist(), lengths[lengths > 1].tolist(), strict=True):
            run = np.sort(order[start : start + length])
            for pos in range(length - 1):
                i = int(run[pos])
                rest = run[pos + 1 :]
                cand = rest[(comp[rest] != comp[i]) & (np.bitwise_count(h[rest] ^ h[i]) <= max_bits)]
                if t is not None and len(cand):
                    cand = cand[np.abs(t[cand] - t[i]).mean(axis=1) <= max_diff]
                for j in cand.tolist():
                    ci, cj = int(comp[i]), int(comp[j])
                    if ci == cj:
                        continue
                    if len(members[ci]) < len(members[cj]):
                        ci, cj = cj, ci
                    comp[members[cj]] = ci  # relabel the smaller group: O(n log n) in all
                    members[ci].extend(members.pop(cj))
    first = {c: min(m) for c, m in members.items()}
    return [first[int(c)] for c in comp]
