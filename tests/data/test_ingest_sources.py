"""Ingest on real files: every kind of source, bad files, safety, duplicates, splits, atomic writes."""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lineguard.config import IngestConfig
from lineguard.ingest import IngestError, ingest
from lineguard.manifest import DatasetError, load_dataset

CFG = IngestConfig(workers=0)


def _image(seed: int, size: int = 48, good: bool = True) -> np.ndarray:
    """A distinct little picture per seed: a disc at a seed-dependent place, dots when good."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = rng.integers(0, 25, (size, size, 3)).astype(np.uint8)
    cx, cy = rng.uniform(0.3, 0.7, 2) * size
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < (size * 0.25) ** 2] = rng.integers(100, 255, 3)
    if good:
        for _ in range(6):
            px, py = rng.integers(4, size - 4, 2)
            img[py - 2 : py + 2, px - 2 : px + 2] = 255
    return img


def _png(img: np.ndarray, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", **kw)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _tree(root: Path, per_class: int = 8, recipes: tuple[str, ...] = ("Vanilla Sprinkles", "chocolate-nuts"),
          folders: tuple[str, str] = ("OK parts", "NOK_2024-05-01"), seed: int = 0) -> Path:
    for r, recipe in enumerate(recipes):
        for good, folder in zip((True, False), folders, strict=True):
            for i in range(per_class):
                s = seed + 1000 * r + (500 if good else 0) + i
                _write(root / recipe / folder / f"IMG_{s:05d}.png", _png(_image(s, good=good)))
    return root


def _sources(report) -> dict[str, str]:
    return {r["source_path"]: r["reason"] for r in report.rejected}


# --- decode and verify ---------------------------------------------------------------------------


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_bad_files_rejected_with_reasons(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    good = src / "Vanilla Sprinkles" / "OK parts"
    _write(good / "zero.png", b"")
    _write(good / "random.jpg", os.urandom(500))
    _write(good / "notes.txt", b"operator notes, not an image")
    full = _png(_image(1))
    _write(good / "truncated.png", full[: len(full) // 2])
    jpg = io.BytesIO()
    Image.fromarray(_image(2, size=96)).save(jpg, format="JPEG")
    _write(good / "truncated.jpg", jpg.getvalue()[: len(jpg.getvalue()) * 2 // 3])
    _write(good / "bomb.png", _bomb_png(8000, 6000))  # 48 MP > 40 MP
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    reasons = _sources(report)
    assert reasons["Vanilla Sprinkles/OK parts/zero.png"] == "empty"
    assert reasons["Vanilla Sprinkles/OK parts/random.jpg"] == "not_an_image"
    assert reasons["Vanilla Sprinkles/OK parts/notes.txt"] == "not_an_image"
    assert reasons["Vanilla Sprinkles/OK parts/truncated.png"] in ("truncated", "corrupt")
    assert reasons["Vanilla Sprinkles/OK parts/truncated.jpg"] in ("truncated", "corrupt")
    assert reasons["Vanilla Sprinkles/OK parts/bomb.png"] == "too_large"
    assert report.images == 32  # every valid image still ingested
    md = (tmp_path / "ds" / "report.md").read_text()
    assert "bomb.png" in md and "too_large" in md


def test_file_size_limit(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", per_class=2)
    _write(src / "Vanilla Sprinkles" / "OK parts" / "big.png", _png(_image(9, size=200)))
    cfg = IngestConfig(workers=0, max_file_bytes=20_000)
    report = ingest(str(src), str(tmp_path / "ds"), cfg)
    assert _sources(report)["Vanilla Sprinkles/OK parts/big.png"] == "file_too_large"


def test_formats_normalised_to_rgb_and_exif_applied(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", per_class=3)
    d = src / "Vanilla Sprinkles" / "OK parts"
    grey = (np.arange(40 * 30) % 256).reshape(40, 30).astype(np.uint8)
    _write(d / "grey.png", _png(grey))
    deep = ((255 - grey).astype(np.uint16) * 257).astype("<u2")  # 16-bit grey, another picture
    _write(d / "deep.png", _png(deep))
    rgba = np.dstack([_image(77, size=40), np.full((40, 40), 128, np.uint8)])
    _write(d / "alpha.png", _png(rgba))
    # EXIF orientation 6 (rotate 90 CW on display): stored 40 wide x 20 high, upright is 20 x 40.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    jpg = io.BytesIO()
    Image.fromarray(stored).save(jpg, format="JPEG", exif=exif.tobytes(), quality=95)
    _write(d / "rotated.jpg", jpg.getvalue())
    ingest(str(src), str(tmp_path / "ds"), CFG)
    ds = load_dataset(str(tmp_path / "ds"))
    rows = ds.manifest.set_index("source_path")
    for name in ("grey.png", "deep.png", "alpha.png", "rotated.jpg"):
        row = rows.loc[f"Vanilla Sprinkles/OK parts/{name}"]
        img = ds.read_image(row["path"])
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert (row["height"], row["width"]) == img.shape[:2]
    rot = rows.loc["Vanilla Sprinkles/OK parts/rotated.jpg"]
    assert (rot["width"], rot["height"]) == (20, 40)
    grey_img = ds.read_image(rows.loc["Vanilla Sprinkles/OK parts/grey.png", "path"])
    deep_img = ds.read_image(rows.loc["Vanilla Sprinkles/OK parts/deep.png", "path"])
    assert (grey_img[..., 0] == grey).all() and (grey_img[..., 0] == grey_img[..., 2]).all()
    assert np.abs(deep_img[..., 1].astype(int) - (255 - grey)).max() <= 1  # 16 bit scaled to 8 bit
    alpha_img = ds.read_image(rows.loc["Vanilla Sprinkles/OK parts/alpha.png", "path"])
    assert alpha_img.max() <= 128  # composited on black at alpha 0.5


def test_hidden_files_and_folders_skipped(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", per_class=2)
    _write(src / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    _write(src / ".git" / "x.png", _png(_image(5)))
    _write(src / "Vanilla Sprinkles" / "OK parts" / ".hidden.png", _png(_image(6)))
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    assert report.skipped_hidden == 3
    assert not report.rejected
    assert not any(p.startswith(".") or "/." in p for p in load_dataset(str(tmp_path / "ds")).manifest["source_path"])


# --- labels --------------------------------------------------------------------------------------


def test_messy_csv_labels_conflicts_and_unlabelled(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", per_class=4)
    un = src / "Vanilla Sprinkles" / "unsorted"
    _write(un / "DSC0001.png", _png(_image(901)))  # labelled by the CSV only
    _write(un / "DSC0002.png", _png(_image(902)))  # no label anywhere
    _write(un / "IMG_0003_NOK.png", _png(_image(903, good=False)))  # label from the file name
    first_good = sorted((src / "Vanilla Sprinkles" / "OK parts").iterdir())[0].name
    csv_text = (
        " File ,Label , Recipe\n"
        "Vanilla Sprinkles\\unsorted\\DSC0001.png, OK ,Vanilla Sprinkles\n"
        f"Vanilla Sprinkles\\OK parts\\{first_good},nok ,vanilla-sprinkles\n"  # planted conflict
        "chocolate-nuts/missing.png,ok,chocolate nuts\n"
    )
    _write(src / "labels.csv", csv_text.encode())
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    rows = load_dataset(str(tmp_path / "ds")).manifest.set_index("source_path")
    assert rows.loc["Vanilla Sprinkles/unsorted/DSC0001.png", ["label", "recipe", "label_source"]].tolist() == [
        "good", "vanilla_sprinkles", "csv"]
    assert rows.loc["Vanilla Sprinkles/unsorted/IMG_0003_NOK.png", "label"] == "bad"
    assert rows.loc["Vanilla Sprinkles/unsorted/IMG_0003_NOK.png", "label_source"] == "filename"
    conflict = f"Vanilla Sprinkles/OK parts/{first_good}"
    assert conflict not in rows.index
    assert [c["source_path"] for c in report.conflicts] == [conflict]
    assert report.conflicts[0]["values"] == {"csv": ["bad"], "folder": ["good"]}
    assert report.unlabelled == ["Vanilla Sprinkles/unsorted/DSC0002.png"]
    assert _sources(report)["chocolate-nuts/missing.png"] == "missing"
    assert set(rows["recipe"]) == {"vanilla_sprinkles", "chocolate_nuts"}


def test_csv_as_source_with_defects(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    lines = ["image,class,recipe,defect type"]
    for i in range(12):
        good = i % 2 == 0
        _write(photos / f"p{i}.png", _png(_image(300 + i, good=good)))
        lines.append(f"p{i}.png,{'ok' if good else 'NG'},line 1,{'' if good else 'Missing Topping'}")
    _write(photos / "list.csv", "\n".join(lines).encode())
    ingest(str(photos / "list.csv"), str(tmp_path / "ds"), CFG)
    m = load_dataset(str(tmp_path / "ds")).manifest
    assert len(m) == 12 and set(m["recipe"]) == {"line_1"}
    assert set(m.loc[m["label"] == "bad", "defect_type"]) == {"missing_topping"}
    assert set(m.loc[m["label"] == "good", "defect_type"]) == {""}
    with pytest.raises(IngestError, match="no file column"):
        _write(photos / "nocol.csv", b"name,label\np0.png,ok\n")
        ingest(str(photos / "nocol.csv"), str(tmp_path / "ds2"), CFG)


def test_class_per_folder_tree_any_class_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for cls, n in (("good", 10), ("Scratch", 4), ("dent", 4)):
        for i in range(n):
            _write(src / cls / f"{i}.png", _png(_image(hash(cls) % 1000 + i, good=cls == "good")))
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    assert report.layout == "class_folders"
    m = load_dataset(str(tmp_path / "ds")).manifest
    assert sorted(set(m["label"])) == ["dent", "good", "scratch"]
    assert set(m["recipe"]) == {"default"}
    assert dict(m["label"].value_counts()) == {"good": 10, "scratch": 4, "dent": 4}


# --- duplicates, splits ----------------------------------------------------------------------------


def test_exact_and_near_duplicates(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", per_class=10)
    folder = src / "Vanilla Sprinkles" / "OK parts"
    original = folder / "IMG_big.png"
    _write(original, _png(_image(4321, size=96)))
    _write(src / "Vanilla Sprinkles" / "good cones" / "copy.png", original.read_bytes())
    # Same pixels in another format: an exact duplicate after normalisation.
    img = np.asarray(Image.open(original).convert("RGB"))
    bmp = io.BytesIO()
    Image.fromarray(img).save(bmp, format="BMP")
    _write(src / "Vanilla Sprinkles" / "PASS" / "same.bmp", bmp.getvalue())
    # A near duplicate: resized to 90 % and re-encoded as JPEG q70.
    near = io.BytesIO()
    Image.fromarray(img).resize((86, 86), Image.Resampling.BILINEAR).save(near, format="JPEG", quality=70)
    _write(src / "Vanilla Sprinkles" / "PASS" / "near.jpg", near.getvalue())
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    m = load_dataset(str(tmp_path / "ds")).manifest.set_index("source_path")
    copies = {f"Vanilla Sprinkles/OK parts/{original.name}", "Vanilla Sprinkles/PASS/same.bmp",
              "Vanilla Sprinkles/good cones/copy.png"}
    assert len(report.duplicates_exact) == 1
    dup = report.duplicates_exact[0]
    assert {dup["kept"], *dup["copies"]} == copies
    assert dup["kept"] == "Vanilla Sprinkles/good cones/copy.png"  # first path, case-insensitively
    assert set(m.index) & copies == {dup["kept"]}  # one row for the three copies
    rel = dup["kept"]
    assert m.loc["Vanilla Sprinkles/PASS/near.jpg", "group_id"] == m.loc[rel, "group_id"]
    assert report.near_duplicate_groups == [sorted([rel, "Vanilla Sprinkles/PASS/near.jpg"])]


def test_duplicate_copies_with_different_labels_are_a_conflict(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", per_class=4)
    original = sorted((src / "Vanilla Sprinkles" / "OK parts").iterdir())[0]
    _write(src / "Vanilla Sprinkles" / "reject" / "same.png", original.read_bytes())
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    held = {c["source_path"] for c in report.conflicts}
    assert held == {f"Vanilla Sprinkles/OK parts/{original.name}", "Vanilla Sprinkles/reject/same.png"}
    assert not set(load_dataset(str(tmp_path / "ds")).manifest["source_path"]) & held


def test_splits_reproducible_grouped_and_balanced(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", per_class=20, folders=("good", "bad"))
    for i in range(20, 40):  # imbalance 1:2 on the good side
        _write(src / "Vanilla Sprinkles" / "good" / f"extra_{i}.png", _png(_image(7000 + i)))
    a = ingest(str(src), str(tmp_path / "a"), CFG)
    b = ingest(str(src), str(tmp_path / "b"), CFG)
    c = ingest(str(src), str(tmp_path / "c"), CFG, seed=7)
    ma, mb, mc = (load_dataset(str(tmp_path / x)).manifest for x in "abc")
    assert a.version == b.version and ma["split"].tolist() == mb["split"].tolist()
    assert c.version != a.version and ma["split"].tolist() != mc["split"].tolist()
    used = ma[ma["split"] != "unused"]
    assert used.groupby("group_id")["split"].nunique().max() == 1
    test = ma[ma["split"] == "test"]
    for recipe, rows in test.groupby("recipe"):
        counts = rows["label"].value_counts()
        assert counts.get("good", 0) == counts.get("bad", 0) > 0, recipe
    assert len(a.unused) > 0
    assert set(ma.loc[ma["split"] == "unused", "source_path"]) == set(a.unused)
    assert set(ma.loc[ma["split"] == "unused", "label"]) == {"good"}
    for split, share in (("train", 0.7), ("val", 0.15)):
        assert abs((ma["split"] == split).mean() - share) < 0.1


# --- writing ---------------------------------------------------------------------------------------


def test_reingest_same_version_and_overwrite_rules(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", per_class=3)
    out = tmp_path / "ds"
    first = ingest(str(src), str(out), CFG)
    assert ingest(str(src), str(out), CFG).version == first.version
    report = json.loads((out / "report.json").read_text())
    assert report["version"] == first.version and report["images"] == 12
    _write(src / "chocolate-nuts" / "OK parts" / "new.png", _png(_image(4242)))
    with pytest.raises(DatasetError, match="already holds dataset version"):
        ingest(str(src), str(out), CFG)
    assert load_dataset(str(out)).version == first.version
    second = ingest(str(src), str(out), CFG, overwrite=True)
    assert second.version != first.version and load_dataset(str(out)).version == second.version


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _tree(tmp_path / "src", per_class=3)
    real_to_parquet = pd.DataFrame.to_parquet

    def boom(self, *a, **kw):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)
    with pytest.raises(OSError, match="simulated"):
        ingest(str(src), str(tmp_path / "ds"), CFG)
    assert not (tmp_path / "ds").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds")]

    # Failing half-way through the image files: still nothing.
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real_to_parquet)
    real_open, calls = open, {"n": 0}

    def flaky_open(file, mode="r", *a, **kw):
        if "w" in str(mode) and ".partial" in str(file):
            calls["n"] += 1
            if calls["n"] == 5:
                raise OSError("disk full mid-write (simulated)")
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr("builtins.open", flaky_open)
    with pytest.raises(OSError, match="mid-write"):
        ingest(str(src), str(tmp_path / "ds"), CFG)
    monkeypatch.setattr("builtins.open", real_open)
    assert not (tmp_path / "ds").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds")]


def test_out_inside_source_and_missing_source_refused(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", per_class=2)
    with pytest.raises(IngestError, match="inside the source"):
        ingest(str(src), str(src / "dataset"), CFG)
    with pytest.raises(IngestError, match="does not exist"):
        ingest(str(tmp_path / "nope"), str(tmp_path / "ds"), CFG)
    _write(tmp_path / "x.docx", b"abc")
    with pytest.raises(IngestError, match="unknown kind"):
        ingest(str(tmp_path / "x.docx"), str(tmp_path / "ds"), CFG)
    empty = tmp_path / "empty"
    _write(empty / "a" / "notes.txt", b"nothing")
    with pytest.raises(IngestError, match="no labelled image"):
        ingest(str(empty), str(tmp_path / "ds"), CFG)


# --- safety (TARGETS R3) ---------------------------------------------------------------------------


def test_csv_path_traversal_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(_png(_image(666)))
    src = _tree(tmp_path / "src", per_class=3)
    _write(src / "labels.csv", (
        "file,label\n"
        "../secret.png,ok\n"
        f"{secret},ok\n"
        "Vanilla Sprinkles/../../secret.png,ok\n"
        "C:\\Windows\\secret.png,ok\n"
    ).encode())
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    reasons = _sources(report)
    assert reasons["../secret.png"] == "unsafe_path"
    assert reasons[str(secret)] == "unsafe_path"
    assert reasons["Vanilla Sprinkles/../../secret.png"] == "unsafe_path"
    assert reasons["C:\\Windows\\secret.png"] == "unsafe_path"
    m = load_dataset(str(tmp_path / "ds")).manifest
    assert len(m) == 12 and not m["source_path"].str.contains("secret").any()
    # A CSV source cannot point outside its root either.
    _write(src / "list.csv", b"path,label\n../secret.png,ok\nVanilla Sprinkles/OK parts/IMG_00500.png,ok\n")
    report = ingest(str(src / "list.csv"), str(tmp_path / "ds2"), CFG)
    assert _sources(report)["../secret.png"] == "unsafe_path" and report.images == 1


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks on this platform")
def test_symlinks_out_of_source_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _write(outside / "secret.png", _png(_image(666)))
    src = _tree(tmp_path / "src", per_class=3)
    os.symlink(outside / "secret.png", src / "Vanilla Sprinkles" / "OK parts" / "link.png")
    os.symlink(outside, src / "Vanilla Sprinkles" / "good")
    inside = sorted((src / "chocolate-nuts" / "OK parts").iterdir())[0]
    os.symlink(inside, src / "chocolate-nuts" / "OK parts" / "inner_link.png")
    _write(src / "labels.csv", b"file,label\nVanilla Sprinkles/good/secret.png,ok\n")
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    reasons = _sources(report)
    assert reasons["Vanilla Sprinkles/OK parts/link.png"] == "symlink_outside_source"
    assert reasons["Vanilla Sprinkles/good"] == "symlink_outside_source"
    assert reasons["Vanilla Sprinkles/good/secret.png"] == "missing"
    m = load_dataset(str(tmp_path / "ds")).manifest
    assert len(m) == 12
    assert any(d["copies"] == ["chocolate-nuts/OK parts/inner_link.png"] for d in report.duplicates_exact)


def _zip_with(path: Path, members: dict[str, bytes], symlink: tuple[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        if symlink:
            info = zipfile.ZipInfo(symlink[0])
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, symlink[1])


def test_zip_inside_folder_and_zip_slip(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", per_class=3)
    members = {f"ok/z{i}.png": _png(_image(800 + i)) for i in range(3)}
    members |= {f"NOK/z{i}.png": _png(_image(850 + i, good=False)) for i in range(3)}
    members["../../evil.png"] = _png(_image(1))
    members["/abs/evil.png"] = _png(_image(2))
    members["ok/.hidden.png"] = _png(_image(3))
    members["__MACOSX/ok/._z0.png"] = b"junk"
    members["ok/inner.zip"] = b"PK\x05\x06" + b"\x00" * 18
    _zip_with(src / "Vanilla Sprinkles" / "batch_2024-05.zip", members, symlink=("ok/link.png", "/etc/passwd"))
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    reasons = _sources(report)
    zp = "Vanilla Sprinkles/batch_2024-05.zip"
    assert reasons[f"{zp}/../../evil.png"] == "unsafe_path"
    assert reasons[f"{zp}//abs/evil.png"] == "unsafe_path"
    assert reasons[f"{zp}/ok/link.png"] == "symlink_in_archive"
    assert reasons[f"{zp}/ok/inner.zip"] == "nested_archive"
    rows = load_dataset(str(tmp_path / "ds")).manifest.set_index("source_path")
    assert rows.loc[f"{zp}/ok/z0.png", ["label", "recipe"]].tolist() == ["good", "vanilla_sprinkles"]
    assert rows.loc[f"{zp}/NOK/z1.png", "label"] == "bad"
    assert not (tmp_path / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()
    assert report.images == 18


def test_zip_bomb_member_limits(tmp_path: Path) -> None:
    src = tmp_path / "src.zip"
    members = {f"good/{i}.png": _png(_image(i)) for i in range(3)}
    members |= {f"bad/{i}.png": _png(_image(50 + i, good=False)) for i in range(3)}
    members["good/bomb.png"] = b"\x00" * 5_000_000  # compresses to a few KB
    with zipfile.ZipFile(src, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    assert src.stat().st_size < 100_000
    report = ingest(str(src), str(tmp_path / "ds"), IngestConfig(workers=0, max_file_bytes=1_000_000))
    assert _sources(report)["good/bomb.png"] == "file_too_large"
    assert report.images == 6 and report.layout == "class_folders"


def test_tar_absolute_and_traversal_members(tmp_path: Path) -> None:
    src = tmp_path / "photos.tar.gz"
    with tarfile.open(src, "w:gz") as tf:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        for i in range(4):
            add(f"line1/good/{i}.png", _png(_image(100 + i)))
            add(f"line1/bad/{i}.png", _png(_image(200 + i, good=False)))
        add("/etc/cron.d/evil.png", _png(_image(1)))
        add("../evil.png", _png(_image(2)))
        link = tarfile.TarInfo("line1/good/link.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    reasons = _sources(report)
    assert reasons["/etc/cron.d/evil.png"] == "unsafe_path"
    assert reasons["../evil.png"] == "unsafe_path"
    assert reasons["line1/good/link.png"] == "symlink_in_archive"
    m = load_dataset(str(tmp_path / "ds")).manifest
    assert len(m) == 8 and set(m["recipe"]) == {"line1"}


def test_pool_gives_the_same_dataset_as_inline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lineguard.ingest.hashing as hashing

    src = _tree(tmp_path / "src", per_class=10)
    _write(src / "Vanilla Sprinkles" / "OK parts" / "zero.png", b"")
    inline = ingest(str(src), str(tmp_path / "a"), CFG)
    monkeypatch.setattr(hashing, "_POOL_MIN_FILES", 1)
    monkeypatch.setattr(hashing, "_CHUNK", 4)
    pooled = ingest(str(src), str(tmp_path / "b"), IngestConfig(workers=2))
    assert pooled.version == inline.version and pooled.rejected == inline.rejected


def test_png_store_spills_to_disk_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lineguard.ingest as ingest_pkg

    store = ingest_pkg._PngStore(budget_bytes=10)
    store.add("a", b"12345")
    store.add("b", b"678901234567")  # over budget: goes to the spill folder
    store.add("a", b"ignored")
    assert store["a"] == b"12345" and store["b"] == b"678901234567" and len(store) == 2 and set(store) == {"a", "b"}
    spill = store._tmp.name  # type: ignore[union-attr]
    assert os.listdir(os.path.join(spill, "png")) == ["b"]
    store.close()
    assert not os.path.exists(spill)
    # A whole ingest with a tiny budget gives the same dataset as in memory.
    src = _tree(tmp_path / "src", per_class=3)
    in_memory = ingest(str(src), str(tmp_path / "a"), CFG)
    monkeypatch.setattr(ingest_pkg._PngStore.__init__, "__defaults__", (1000, None))
    spilled = ingest(str(src), str(tmp_path / "b"), CFG)
    assert spilled.version == in_memory.version
    assert load_dataset(str(tmp_path / "b")).read_image(load_dataset(str(tmp_path / "b")).manifest["path"][0]).size
