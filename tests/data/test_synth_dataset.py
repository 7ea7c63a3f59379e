"""Checks on real files written by ``synth``: the messy layout against its ground truth and the contract
in docs/data-layout.md (what ingest is scored against)."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lineguard.config import IngestConfig, SynthConfig
from lineguard.preprocess import ImageDecodeError, decode_image
from lineguard.synth import (
    MESSY_SHARES,
    RECIPE_IDS,
    TRUTH_COLUMNS,
    Item,
    _messy_layout,
    make_items,
    render_item,
    synth,
)

CFG = SynthConfig(recipes=3, per_class=8, size=64, seed=3)


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "messy"
    synth(str(out), CFG, messy=True, workers=1)
    return out


@pytest.fixture(scope="module")
def truth(messy: Path) -> list[dict[str, str]]:
    with open(messy / ".truth" / "ground_truth.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == TRUTH_COLUMNS
        return list(reader)


def _read(root: Path, source_path: str) -> bytes:
    """A file's bytes, reading zip members as '<zip path>/<member path>'."""
    if ".zip/" in source_path:
        zip_path, member = source_path.split(".zip/", 1)
        with zipfile.ZipFile(root / f"{zip_path}.zip") as zf:
            return zf.read(member)
    return (root / source_path).read_bytes()


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _tokens(text: str) -> set[str]:
    return {t for t in re.split(r"[^a-z0-9]+", text.lower()) if t}


def _label_of_tokens(tokens: set[str]) -> set[str]:
    synonyms = IngestConfig().label_synonyms
    return {label for label, words in synonyms.items() if tokens & {w.lower() for w in words}}


def _item_of(item_id: str) -> Item:
    """The generated Item behind a ground-truth item_id."""
    return {it.item_id: it for it in make_items(CFG)}[item_id]


def test_ground_truth_rows_match_the_files_on_disk(messy: Path, truth: list[dict[str, str]]) -> None:
    on_disk = set()
    for p in messy.rglob("*"):
        rel = p.relative_to(messy).as_posix()
        if not p.is_file() or any(part.startswith(".") for part in rel.split("/")) or rel == "labels.csv":
            continue
        if p.suffix == ".zip":
            with zipfile.ZipFile(p) as zf:
                on_disk |= {f"{rel}/{name}" for name in zf.namelist()}
        else:
            on_disk.add(rel)
    assert on_disk == {r["source_path"] for r in truth}
    assert len(truth) == len(on_disk)


def test_expected_kinds_and_labels(truth: list[dict[str, str]]) -> None:
    kinds = Counter(r["expected"] for r in truth)
    assert set(kinds) == {"image", "unlabelled", "conflict", "corrupt", "duplicate_exact", "duplicate_near"}
    for r in truth:
        if r["expected"] == "corrupt":
            assert r["label"] == r["recipe"] == r["defect_type"] == r["item_id"] == ""
        else:
            assert r["label"] in ("good", "bad") and r["recipe"] in RECIPE_IDS[:3] and r["item_id"]
            assert (r["defect_type"] == "") == (r["label"] == "good")
        assert (r["original"] != "") == r["expected"].startswith("duplicate")
    # every generated item is shown at least once as a valid (non-duplicate) file
    shown = {r["item_id"] for r in truth if r["expected"] in ("image", "unlabelled", "conflict")}
    assert shown == {it.item_id for it in make_items(CFG)}


def test_recipe_folders_normalise_to_recipe_ids(truth: list[dict[str, str]]) -> None:
    for r in truth:
        if r["recipe"]:
            assert _norm(r["source_path"].split("/")[0]) == r["recipe"]
    tops = {r["source_path"].split("/")[0] for r in truth}
    assert all(t != _norm(t) for t in tops)  # messy spellings, never the plain id


def test_valid_files_decode_and_corrupt_ones_fail(messy: Path, truth: list[dict[str, str]]) -> None:
    reasons = set()
    for r in truth:
        data = _read(messy, r["source_path"])
        if r["expected"] == "corrupt":
            with pytest.raises(ImageDecodeError) as exc:
                decode_image(data)
            reasons.add(exc.value.reason)
        else:
            img = decode_image(data)
            assert img.ndim == 3 and img.shape[2] == 3
    assert {"empty", "not_an_image", "truncated"} <= reasons
    corrupt_names = [r["source_path"] for r in truth if r["expected"] == "corrupt"]
    assert any(n.endswith(".txt") for n in corrupt_names)
    assert any(n.endswith(".png") for n in corrupt_names) and any(n.endswith(".jpg") for n in corrupt_names)


def test_every_storage_format_is_present(messy: Path, truth: list[dict[str, str]]) -> None:
    seen: set[str] = set()
    for r in truth:
        if r["expected"] == "corrupt":
            continue
        pil = Image.open(io.BytesIO(_read(messy, r["source_path"])))
        fmt, mode = pil.format, pil.mode
        seen.add(str(fmt))
        if mode in ("RGBA", "L", "I;16"):
            seen.add(mode)
        if fmt == "JPEG" and pil.getexif().get(0x0112, 1) != 1:
            seen.add("exif-rotated")
        if pil.size != (64, 64):
            seen.add("square" if pil.size[0] == pil.size[1] else "other-aspect")
    assert {"PNG", "JPEG", "BMP", "RGBA", "L", "I;16", "exif-rotated", "square", "other-aspect"} <= seen


def test_exif_rotated_jpeg_decodes_upright(messy: Path, truth: list[dict[str, str]]) -> None:
    checked = 0
    for r in truth:
        if r["expected"] not in ("image", "unlabelled", "conflict"):
            continue
        data = _read(messy, r["source_path"])
        pil = Image.open(io.BytesIO(data))
        if pil.format != "JPEG" or pil.getexif().get(0x0112, 1) == 1:
            continue
        original = render_item(_item_of(r["item_id"]), CFG.size, CFG.difficulty, CFG.seed).astype(np.float32)
        upright = decode_image(data).astype(np.float32)
        raw = np.asarray(pil.convert("RGB"), np.float32)  # the stored, rotated pixels
        assert upright.shape == original.shape
        err_upright = np.abs(upright - original).mean()
        assert err_upright < 8
        if raw.shape == original.shape:
            assert np.abs(raw - original).mean() > 2 * err_upright
        checked += 1
    assert checked >= 3


def test_duplicates_match_their_original(messy: Path, truth: list[dict[str, str]]) -> None:
    by_path = {r["source_path"]: r for r in truth}
    for r in truth:
        if not r["expected"].startswith("duplicate"):
            continue
        orig = by_path[r["original"]]
        assert orig["expected"] == "image" and orig["item_id"] == r["item_id"] and orig["label"] == r["label"]
        assert Path(r["source_path"]).parent != Path(r["original"]).parent
        a, b = _read(messy, r["source_path"]), _read(messy, r["original"])
        if r["expected"] == "duplicate_exact":
            assert a == b
        else:
            assert a != b
            near = np.asarray(Image.fromarray(decode_image(a)).resize((64, 64)), np.float32)
            assert np.abs(near - decode_image(b).astype(np.float32)).mean() < 12


def test_labels_csv_is_messy_and_conflicts_are_the_only_contradictions(messy: Path,
                                                                       truth: list[dict[str, str]]) -> None:
    text = (messy / "labels.csv").read_text()
    header = text.splitlines()[0].split(",")
    assert header == [" File ", "Label ", " Recipe"]
    rows = list(csv.DictReader(io.StringIO(text)))
    assert any("\\" in r[" File "] for r in rows)
    cells = {r["Label "] for r in rows}
    assert any(c != c.strip() for c in cells) and any(c != c.lower() for c in cells)
    by_path = {t["source_path"]: t for t in truth}
    csv_paths = set()
    for r in rows:
        path = r[" File "].replace("\\", "/")
        csv_paths.add(path)
        t = by_path[path]
        csv_label = _label_of_tokens(_tokens(r["Label "]))
        assert len(csv_label) == 1
        assert _norm(r[" Recipe"]) == t["recipe"]
        if t["expected"] == "conflict":
            assert csv_label != {t["label"]}
        else:
            assert t["expected"] == "image" and csv_label == {t["label"]}
    conflicts = {t["source_path"] for t in truth if t["expected"] == "conflict"}
    assert conflicts <= csv_paths


def test_path_labels_never_contradict_the_truth(truth: list[dict[str, str]]) -> None:
    """Folder and file names carry no synonym of the wrong class (no accidental conflicts)."""
    for r in truth:
        if r["expected"] == "corrupt":
            continue
        parts = r["source_path"].split("/")[1:]  # below the recipe folder
        labels = set().union(*(_label_of_tokens(_tokens(Path(p).stem)) for p in parts))
        if r["expected"] == "unlabelled":
            assert labels == set()
        else:
            assert labels <= {r["label"]}, r["source_path"]
    unsorted_token = [r for r in truth if "/unsorted/" in r["source_path"] and r["expected"] == "image"
                      and _label_of_tokens(_tokens(Path(r["source_path"]).stem))]
    assert unsorted_token  # some files are labelled by a file-name token only


def test_zip_members_live_in_label_folders(truth: list[dict[str, str]]) -> None:
    members = [r for r in truth if ".zip/" in r["source_path"]]
    assert {r["label"] for r in members} == {"good", "bad"}
    for r in members:
        folder = r["source_path"].split(".zip/", 1)[1].split("/")[0]
        assert _label_of_tokens(_tokens(folder)) == {r["label"]}


def test_messy_shares_stay_modest() -> None:
    """At a realistic size the broken, duplicate, conflicting and unlabelled files stay a few percent."""
    files, rows = _messy_layout(make_items(SynthConfig(recipes=5, per_class=100)), seed=0)
    counts = Counter(f.expected for f in files if f.expected != "hidden")
    total = sum(counts.values())
    assert 0.03 <= counts["corrupt"] / total <= 0.07
    assert 0.03 <= (counts["duplicate_exact"] + counts["duplicate_near"]) / total <= 0.07
    assert 0.02 <= counts["conflict"] / total <= 0.04
    assert 0.02 <= counts["unlabelled"] / total <= 0.04
    assert MESSY_SHARES["conflict"] < 0.05
    assert len(rows) > counts["conflict"]


def test_messy_layout_is_deterministic(tmp_path: Path, messy: Path) -> None:
    again = tmp_path / "again"
    synth(str(again), CFG, messy=True, workers=2)
    files = sorted(p.relative_to(messy).as_posix() for p in messy.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again).as_posix() for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (messy / rel).read_bytes() == (again / rel).read_bytes(), rel
