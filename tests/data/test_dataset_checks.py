"""``validate`` and ``info`` on good and broken datasets, and the data CLI commands over them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from lineguard.cli import app
from lineguard.manifest import MANIFEST_FILE, Dataset, info, load_dataset, validate, write_dataset

runner = CliRunner()


def _status(report, name: str) -> str:
    return next(c.status for c in report.checks if c.name == name)


def _rewrite(ds: Dataset, out: Path, change) -> Path:
    """Write a copy of ``ds`` with its manifest changed by ``change(df)``."""
    df = change(ds.manifest.copy())
    images = {i: (Path(ds.root) / p).read_bytes() for i, p in zip(ds.manifest["image_id"], ds.manifest["path"],
                                                                  strict=True)}
    write_dataset(str(out), df, images)
    return out


def test_good_dataset_passes(simple_dataset: Dataset) -> None:
    report = validate(simple_dataset.root)
    assert report.ok, report.failures
    assert report.version == simple_dataset.version
    assert {c.name for c in report.checks} >= {
        "schema", "files", "split leakage", "splits", "class balance", "recipe coverage", "test balance", "image sizes"}
    assert report.stats["sizes"]["width"]["max"] == 64
    result = runner.invoke(app, ["data", "validate", simple_dataset.root])
    assert result.exit_code == 0, result.output
    assert "split leakage" in result.output


def test_tampered_and_missing_images_fail(simple_dataset: Dataset) -> None:
    paths = list(simple_dataset.manifest["path"])
    (Path(simple_dataset.root) / paths[0]).write_bytes(b"not the image any more")
    (Path(simple_dataset.root) / paths[1]).unlink()
    report = validate(simple_dataset.root)
    assert not report.ok and _status(report, "files") == "fail"
    detail = next(c.detail for c in report.checks if c.name == "files")
    assert "does not hash" in detail and "missing" in detail
    result = runner.invoke(app, ["data", "validate", simple_dataset.root])
    assert result.exit_code == 1
    assert validate(simple_dataset.root, check_files=False).ok


def test_group_leak_fails(simple_dataset: Dataset, tmp_path: Path) -> None:
    def leak(df: pd.DataFrame) -> pd.DataFrame:
        train = df.index[df["split"] == "train"][0]
        test = df.index[df["split"] == "test"][0]
        df.loc[train, "group_id"] = df.loc[test, "group_id"]
        return df

    out = _rewrite(simple_dataset, tmp_path / "leaky", leak)
    report = validate(str(out))
    assert _status(report, "split leakage") == "fail" and not report.ok


def test_soft_issues_are_warnings(simple_dataset: Dataset, tmp_path: Path) -> None:
    def unbalance(df: pd.DataFrame) -> pd.DataFrame:
        bad_test = df.index[(df["split"] == "test") & (df["label"] == "bad")]
        df.loc[bad_test[:2], "split"] = "train"
        df.loc[df["split"] == "val", "split"] = "train"
        return df

    out = _rewrite(simple_dataset, tmp_path / "unbalanced", unbalance)
    report = validate(str(out))
    assert report.ok
    assert _status(report, "test balance") == "warn"
    assert _status(report, "val split") == "warn"
    assert runner.invoke(app, ["data", "validate", str(out)]).exit_code == 0


def test_one_class_and_empty_test_fail(simple_dataset: Dataset, tmp_path: Path) -> None:
    out = _rewrite(simple_dataset, tmp_path / "one", lambda df: df[df["label"] == "good"].assign(
        split=lambda d: d["split"].replace({"test": "train"})))
    report = validate(str(out))
    assert _status(report, "class balance") == "fail" and _status(report, "splits") == "fail"


def test_not_a_dataset_and_modified_manifest(tmp_path: Path, simple_dataset: Dataset) -> None:
    report = validate(str(tmp_path / "nothing"))
    assert not report.ok and "does not exist" in report.checks[0].detail
    df = pd.read_parquet(Path(simple_dataset.root) / MANIFEST_FILE)
    df.loc[0, "label"] = "bad" if df.loc[0, "label"] == "good" else "good"
    df.to_parquet(Path(simple_dataset.root) / MANIFEST_FILE, index=False)
    report = validate(simple_dataset.root)
    assert not report.ok and "modified after it was written" in report.checks[0].detail
    assert runner.invoke(app, ["data", "validate", str(tmp_path / "nothing")]).exit_code == 1


def test_info(simple_dataset: Dataset) -> None:
    d = info(simple_dataset.root)
    assert d["version"] == simple_dataset.version and d["images"] == 80
    assert d["classes"] == ["good", "bad"] and d["recipes"] == ["recipe_0", "recipe_1"]
    assert sum(d["splits"].values()) == 80
    assert sum(r["train"] + r["val"] + r["test"] + r["unused"] for r in d["table"]) == 80
    result = runner.invoke(app, ["data", "info", simple_dataset.root])
    assert result.exit_code == 0 and simple_dataset.version in result.output and "recipe_1" in result.output


def test_ingest_cli_end_to_end(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from tests.conftest import draw_simple_item  # the shared drawing helper

    rng = np.random.default_rng(0)
    for label, folder in (("good", "Good"), ("bad", "Defect")):
        for i in range(10):
            path = tmp_path / "raw" / "Line A" / folder / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(draw_simple_item(rng, 48, 0, label == "good")).save(path)
    (tmp_path / "raw" / "Line A" / "Good" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nxx")
    out = tmp_path / "ds"
    result = runner.invoke(app, ["data", "ingest", str(tmp_path / "raw"), "--out", str(out), "--seed", "3",
                                 "--set", "ingest.workers=0"])
    assert result.exit_code == 0, result.output
    assert "report.md" in result.output and "rejected" in result.output
    ds = load_dataset(str(out))
    assert len(ds.manifest) == 20 and ds.meta["ingest"]["seed"] == 3 and ds.meta["source"] == str(tmp_path / "raw")
    report = json.loads((out / "report.json").read_text())
    assert report["rejected"][0]["source_path"] == "Line A/Good/broken.png"
    result = runner.invoke(app, ["data", "ingest", str(tmp_path / "raw"), "--out", str(out), "--set",
                                 "ingest.nope=1"])
    assert result.exit_code != 0 and "unknown config key" in str(result.exception)


@pytest.mark.parametrize("cmd", ["ingest", "validate", "info"])
def test_help(cmd: str) -> None:
    result = runner.invoke(app, ["data", cmd, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output
