"""The Dataset contract: content addressing, version hash, atomic and immutable writes."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from lineguard.manifest import (
    COLUMNS,
    DatasetError,
    load_dataset,
    manifest_version,
    write_dataset,
)
from tests.conftest import make_simple_dataset


def test_written_dataset_loads_with_its_version(tmp_path: Path) -> None:
    ds = make_simple_dataset(tmp_path / "ds", per_class=5, recipes=2, size=32)
    again = load_dataset(str(tmp_path / "ds"))
    assert again.version == ds.version
    assert list(again.manifest.columns) == list(COLUMNS)
    assert again.classes == ["good", "bad"]
    assert again.recipes == ["recipe_0", "recipe_1"]
    row = again.manifest.iloc[0]
    assert row["path"].startswith(f"images/{row['image_id'][:2]}/")
    img = again.read_image(row["path"])
    assert img.shape == (32, 32, 3)
    assert len(again.split("train")) + len(again.split("val")) + len(again.split("test")) == 20


def test_version_ignores_ingest_time_and_row_order(tmp_path: Path) -> None:
    ds = make_simple_dataset(tmp_path / "ds", per_class=3, recipes=1, size=16)
    df = ds.manifest.copy()
    df["ingested_at"] = "2030-01-01T00:00:00Z"
    assert manifest_version(df.iloc[::-1]) == ds.version
    df.loc[0, "label"] = "bad" if df.loc[0, "label"] == "good" else "good"
    assert manifest_version(df) != ds.version


def test_rewrite_same_version_is_a_no_op_and_different_is_refused(tmp_path: Path) -> None:
    ds = make_simple_dataset(tmp_path / "ds", per_class=3, recipes=1, size=16)
    again = make_simple_dataset(tmp_path / "ds", per_class=3, recipes=1, size=16)
    assert again.version == ds.version
    with pytest.raises(DatasetError, match="immutable"):
        make_simple_dataset(tmp_path / "ds", per_class=4, recipes=1, size=16)
    assert load_dataset(str(tmp_path / "ds")).version == ds.version  # nothing lost


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    ds = make_simple_dataset(tmp_path / "ds", per_class=2, recipes=1, size=16)
    rows = ds.manifest
    images = {i: (tmp_path / "ds" / p).read_bytes() for i, p in zip(rows["image_id"], rows["path"], strict=True)}
    with pytest.raises(DatasetError, match="no image bytes"):
        write_dataset(str(tmp_path / "x"), rows, {})
    first = rows["image_id"].iloc[0]
    with pytest.raises(DatasetError, match="do not hash"):
        write_dataset(str(tmp_path / "y"), rows, {**images, first: b"tampered"})
    with pytest.raises(DatasetError, match="missing columns"):
        write_dataset(str(tmp_path / "z"), rows.drop(columns=["recipe"]), images)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_interrupted_write_leaves_no_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_simple_dataset(tmp_path / "ds", per_class=2, recipes=1, size=16)
    images = {i: (tmp_path / "ds" / p).read_bytes() for i, p in zip(ds.manifest["image_id"], ds.manifest["path"], strict=True)}

    def boom(*_a: object, **_k: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)
    with pytest.raises(OSError):
        write_dataset(str(tmp_path / "new"), ds.manifest, images)
    assert not (tmp_path / "new").exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]


def test_tampered_manifest_is_detected(tmp_path: Path) -> None:
    ds = make_simple_dataset(tmp_path / "ds", per_class=2, recipes=1, size=16)
    df = ds.manifest.copy()
    df.loc[0, "label"] = "bad" if df.loc[0, "label"] == "good" else "good"
    df.to_parquet(tmp_path / "ds" / "manifest.parquet")
    with pytest.raises(DatasetError, match="modified after it was written"):
        load_dataset(str(tmp_path / "ds"))


def test_missing_and_non_datasets_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(str(tmp_path / "nothing"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(DatasetError, match="lineguard data ingest"):
        load_dataset(str(tmp_path / "folder"))
