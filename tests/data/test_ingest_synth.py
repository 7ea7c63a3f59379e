"""Ingest recovers the ground truth of ``synth --messy`` (docs/data-layout.md), file by file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lineguard.config import IngestConfig, SynthConfig
from lineguard.ingest import ingest
from lineguard.manifest import load_dataset, validate


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lineguard.synth import synth

    out = tmp_path_factory.mktemp("synth") / "messy"
    synth(str(out), SynthConfig(recipes=2, per_class=15, size=64, seed=3), messy=True, workers=1)
    return out


def test_ingest_recovers_synth_ground_truth(messy: Path, tmp_path: Path) -> None:
    report = ingest(str(messy), str(tmp_path / "ds"), IngestConfig(workers=0))
    truth = pd.read_csv(messy / ".truth" / "ground_truth.csv", dtype=str, keep_default_na=False)
    m = load_dataset(str(tmp_path / "ds")).manifest
    row_of = {r.source_path: r for r in m.itertuples()}
    kept_for = {c: d["kept"] for d in report.duplicates_exact for c in d["copies"]}
    rejected = {r["source_path"] for r in report.rejected}
    conflicts = {c["source_path"] for c in report.conflicts}
    kinds = set(truth["expected"])
    assert {"image", "corrupt", "conflict", "unlabelled", "duplicate_exact", "duplicate_near"} <= kinds

    wrong = []
    for t in truth.itertuples():
        if t.expected == "image":
            # Collapsed exact duplicates may keep the other copy: the image is in the manifest either way.
            r = row_of.get(t.source_path) or row_of.get(kept_for.get(t.source_path, ""))
            if r is None or (r.label, r.recipe) != (t.label, t.recipe):
                wrong.append((t.source_path, "image", None if r is None else (r.label, r.recipe)))
        elif t.expected == "corrupt":
            if t.source_path not in rejected:
                wrong.append((t.source_path, "corrupt not rejected"))
        elif t.expected == "conflict":
            if t.source_path not in conflicts or t.source_path in row_of:
                wrong.append((t.source_path, "conflict not held out"))
        elif t.expected == "unlabelled":
            if t.source_path not in report.unlabelled or t.source_path in row_of:
                wrong.append((t.source_path, "unlabelled not reported"))
        elif t.expected == "duplicate_exact":
            pair = {t.source_path, t.original}
            in_manifest = pair & set(row_of)
            if len(in_manifest) != 1 or not any(pair <= {d["kept"], *d["copies"]} for d in report.duplicates_exact):
                wrong.append((t.source_path, "exact duplicate not collapsed"))
        elif t.expected == "duplicate_near":
            a, b = row_of.get(t.source_path), row_of.get(t.original)
            if a is None or b is None or a.group_id != b.group_id:
                wrong.append((t.source_path, "near duplicate not grouped with its original"))
    assert not wrong, wrong
    # Nothing is accepted that the truth does not call valid, and nothing valid is lost.
    valid = set(truth.loc[truth["expected"].isin(["image", "duplicate_near"]), "source_path"])
    assert set(m["source_path"]) <= valid | set(truth.loc[truth["expected"] == "duplicate_exact", "source_path"])
    assert report.skipped_hidden >= 1
    # A near-duplicate group never straddles splits; the dataset validates.
    assert m[m["split"] != "unused"].groupby("group_id")["split"].nunique().max() == 1
    check = validate(str(tmp_path / "ds"))
    assert check.ok, check.failures


def test_clean_synth_layout_ingests_with_defect_types(tmp_path: Path) -> None:
    from lineguard.synth import synth

    synth(str(tmp_path / "clean"), SynthConfig(recipes=2, per_class=6, size=48, seed=1), workers=1)
    report = ingest(str(tmp_path / "clean"), str(tmp_path / "ds"), IngestConfig(workers=0))
    truth = pd.read_csv(tmp_path / "clean" / ".truth" / "ground_truth.csv", dtype=str, keep_default_na=False)
    m = load_dataset(str(tmp_path / "ds")).manifest.set_index("source_path")
    assert report.images == len(truth) == 24 and not report.rejected and not report.conflicts
    for t in truth.itertuples():
        assert m.loc[t.source_path, ["label", "recipe", "defect_type"]].tolist() == [t.label, t.recipe, t.defect_type]
