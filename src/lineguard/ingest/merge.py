"""The previous dataset version an ingest merges with (``ingest(..., merge_with=PREV)``).

The loop back from the line ends here: frames picked by ``lineguard monitor select`` are
labelled and ingested into a *new* version that holds every item of the previous one
plus the new items. This module holds what is specific to PREV: refusing paths and class
sets that cannot merge, hashing PREV's stored images (so a new photo that is a near copy
of a PREV item is found and joins that item's split), reading PREV's image bytes for the
new dataset (a dataset stays self-contained: its images are copied, never referenced),
and balancing the test split while PREV's test items stay where they are. PREV is only
ever read.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lineguard import storage
from lineguard.config import IngestConfig
from lineguard.ingest.hashing import perceptual_hash, thumbnail
from lineguard.ingest.sources import IngestError

if TYPE_CHECKING:  # the manifest (pandas) is imported when a merge runs, not with lineguard.ingest
    from lineguard.manifest import Dataset

_POOL_MIN_IMAGES = 256  # below this a process pool costs more than it saves


def _norm(url: str) -> str:
    return os.path.realpath(storage.local_path(url)) if storage.is_local(url) else url.rstrip("/")


def _inside(child: str, parent: str) -> bool:
    return child.startswith(parent.rstrip("/") + "/")


def check_merge_paths(out: str, prev: str) -> None:
    """Refuse a NEW that is PREV, lies inside it or holds it: writing NEW must never touch PREV."""
    p, o = _norm(prev), _norm(out)
    if storage.is_local(prev) != storage.is_local(out):
        return
    if p == o:
        raise IngestError(
            f"--merge-with '{prev}' is the --out folder; datasets are immutable -- write the merged version to a "
            "new --out folder"
        )
    if _inside(o, p):
        raise IngestError(
            f"--out '{out}' is inside the previous dataset '{prev}'; write the merged version elsewhere"
        )
    if _inside(p, o):
        raise IngestError(
            f"the previous dataset '{prev}' is inside --out '{out}'; write the merged version to a folder beside it"
        )


def open_previous(prev: str, config: IngestConfig) -> Dataset:
    """PREV loaded and checked before SRC is read: a dataset, with the positive class of this ingest."""
    from lineguard.manifest import DatasetError, load_dataset

    try:
        ds = load_dataset(prev)
    except DatasetError as exc:
        raise IngestError(
            f"--merge-with '{prev}' is not a readable LineGuard dataset ({exc}); give the folder of the previous "
            "dataset version (made by lineguard data ingest)"
        ) from None
    if ds.positive_class != config.positive_class:
        raise IngestError(
            f"the previous dataset '{prev}' has positive class '{ds.positive_class}', this ingest "
            f"'{config.positive_class}'; set ingest.positive_class={ds.positive_class} to merge, or ingest without "
            "--merge-with to start a new dataset"
        )
    return ds


def check_classes(ds: Dataset, labels: set[str], src: str) -> None:
    """SRC may bring fewer classes than PREV (a batch of defects), never a class PREV does not have."""
    unknown = sorted(labels - set(ds.classes))
    if unknown:
        raise IngestError(
            f"'{src}' has class(es) {', '.join(unknown)} that the previous dataset '{ds.root}' does not have "
            f"({', '.join(ds.classes)}); relabel them to those classes (ingest.label_synonyms), or ingest without "
            "--merge-with to start a new dataset"
        )


@dataclass
class PreviousHashes:
    """Per stored PREV image: the id SRC would give its pixels, its perceptual hash and thumbnail."""

    canonical: dict[str, str] = field(default_factory=dict)  # id of the re-encoded pixels -> stored image id
    phash: dict[str, int] = field(default_factory=dict)
    thumb: dict[str, np.ndarray] = field(default_factory=dict)


def _hash_one(url: str) -> tuple[str, int, np.ndarray] | str:
    from lineguard.manifest import encode_png, image_id_of
    from lineguard.preprocess import ImageDecodeError, decode_image

    try:
        image = decode_image(storage.read_bytes(url), max_pixels=2**40)
    except (ImageDecodeError, storage.StorageError) as exc:
        return str(exc)
    return image_id_of(encode_png(image)), perceptual_hash(image), thumbnail(image)


def _hash_chunk(urls: list[str]) -> list[tuple[str, int, np.ndarray] | str]:
    return [_hash_one(u) for u in urls]


def hash_previous(ds: Dataset, config: IngestConfig) -> PreviousHashes:
    """Decode every stored PREV image once: its canonical id (what ingest gives these pixels, so an
    image stored by an older encoder still matches), pHash and thumbnail. A PREV image that cannot be
    read stops the merge: PREV is damaged and ``lineguard data validate`` says how.
    """
    rows = ds.manifest.drop_duplicates("image_id")
    ids = list(rows["image_id"])
    urls = [ds.image_url(p) for p in rows["path"]]
    if config.workers >= 2 and len(urls) >= _POOL_MIN_IMAGES:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from lineguard.ingest.hashing import exit_with_parent

        chunks = [urls[i : i + 32] for i in range(0, len(urls), 32)]
        with ProcessPoolExecutor(
            config.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=exit_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            results = [r for chunk in pool.map(_hash_chunk, chunks) for r in chunk]
    else:
        results = _hash_chunk(urls)
    out = PreviousHashes()
    for image_id, path, result in zip(ids, rows["path"], results, strict=True):
        if isinstance(result, str):
            raise IngestError(
                f"image {path} of the previous dataset '{ds.root}' cannot be read ({result}); run "
                f"lineguard data validate {ds.root}"
            )
        canonical, phash, thumb = result
        out.canonical.setdefault(canonical, image_id)
        out.canonical.setdefault(image_id, image_id)
        out.phash[image_id] = phash
        out.thumb[image_id] = thumb
    return out


class MergedImages(Mapping[str, bytes]):
    """image id -> PNG bytes: SRC's new images first, else read from PREV (copied into NEW, never linked)."""

    def __init__(self, new: Mapping[str, bytes], previous: Dataset) -> None:
        self._new = new
        self._prev = previous
        self._prev_path = dict(zip(previous.manifest["image_id"], previous.manifest["path"], strict=True))

    def __getitem__(self, image_id: str) -> bytes:
        if image_id in self._new:
            return self._new[image_id]
        if image_id in self._prev_path:
            return storage.read_bytes(self._prev.image_url(self._prev_path[image_id]))
        raise KeyError(image_id)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._new or image_id in self._prev_path

    def __iter__(self) -> Iterator[str]:
        yield from self._new
        yield from (i for i in self._prev_path if i not in self._new)

    def __len__(self) -> int:
        return len(self._new) + sum(1 for i in self._prev_path if i not in self._new)


def balance_new_test(
    test_items: Sequence[tuple[str, str, str, bool]],
    seed: int,
    holdout: str,
    split_of: dict[str, str],
) -> tuple[list[str], list[str]]:
    """Balance each recipe's test split between classes by moving *new* test items only to ``holdout``.

    ``test_items`` are ``(image_id, recipe, label, is_new)`` of every test row, PREV's and
    SRC's. PREV's test items never move (the old and new model are compared on them), so
    a class that has more test items than another loses only new ones, as many as it has;
    a test split PREV left unbalanced stays so (``lineguard data validate`` warns).
    Returns (moved image ids, warnings); ``split_of`` (new items) is updated in place.
    """
    rng = np.random.default_rng(seed + 1)
    per_recipe: dict[str, dict[str, list[tuple[str, bool]]]] = defaultdict(lambda: defaultdict(list))
    for image_id, recipe, label, is_new in sorted(test_items):
        per_recipe[recipe][label].append((image_id, is_new))
    moved: list[str] = []
    warnings: list[str] = []
    for recipe in sorted(per_recipe):
        per_label = per_recipe[recipe]
        if not any(new for items in per_label.values() for _, new in items):
            continue
        if len(per_label) < 2:
            warnings.append(
                f"recipe '{recipe}': the test split has only '{next(iter(per_label))}' images, "
                "so it cannot be balanced"
            )
            continue
        m = min(len(v) for v in per_label.values())
        for label in sorted(per_label):
            new_ids = [i for i, new in per_label[label] if new]
            surplus = min(len(per_label[label]) - m, len(new_ids))
            if surplus > 0:
                for idx in sorted(rng.choice(len(new_ids), surplus, replace=False)):
                    split_of[new_ids[idx]] = holdout
                    moved.append(new_ids[idx])
    return moved, warnings


def summarise(merge: dict[str, Any]) -> list[tuple[str, list[int]]]:
    """(split, [from PREV, new, relabelled, already present, near duplicates of PREV]) per split, for reports."""
    per_split = merge.get("per_split", {})
    kinds = ("previous", "new", "relabelled", "already_present", "near_duplicates_of_previous")
    return [
        (s, [int(per_split[s].get(k, 0)) for k in kinds])
        for s in ("train", "val", "test", "unused")
        if s in per_split
    ]
