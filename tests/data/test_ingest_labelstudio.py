"""Ingest of a real-format Label Studio export (tests/fixtures/labelstudio): labels in, escapes refused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lineguard.config import IngestConfig
from lineguard.ingest import ingest
from lineguard.manifest import load_dataset
from tests.unit.test_labelstudio import FIXTURE_FILES

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "labelstudio"
EXPORT = FIXTURES / "project-3-at-2026-05-04-16-25-export.json"
FILES = FIXTURE_FILES  # the images the fixture export points at, relative to its local-files root


@pytest.mark.skipif(not EXPORT.exists(), reason="Label Studio fixtures not present")
def test_labelstudio_export_ingested(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for i, rel in enumerate(FILES):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / rel)
    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(secret)
    os.symlink(secret, root / "Mint Chips" / "unsorted" / "link_out.png")

    report = ingest(str(EXPORT), str(tmp_path / "ds"), IngestConfig(workers=0), root=str(root))
    assert report.layout == "labelstudio"
    m = load_dataset(str(tmp_path / "ds")).manifest.set_index("source_path")
    assert set(m["label_source"]) == {"labelstudio"}
    assert m.loc["Vanilla Sprinkles/unsorted/IMG_0001.png", ["label", "recipe"]].tolist() == ["good",
                                                                                             "vanilla_sprinkles"]
    assert m.loc["chocolate-nuts/unsorted/cone-0008.png", "label"] == "bad"
    reasons = [r["reason"] for r in report.rejected]
    assert reasons.count("labelstudio_outside_root") == 4  # '..', double-encoded '..', absolute, symlink out
    assert "labelstudio_unknown_label" in reasons and "labelstudio_cancelled" in reasons
    assert any("cone-0005" in u for u in report.unlabelled)
    assert any("annotators chose" in w for w in report.warnings)
    assert all("secret" not in p for p in m.index)
