"""Ingest merged with the previous dataset version: the labelled export of the loop back (issue 13 section 6)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from lineguard import LineguardError
from lineguard.config import IngestConfig
from lineguard.ingest import IngestError, ingest
from lineguard.manifest import DatasetError, load_dataset, validate
from tests._labelstudio_export import labelled_export

CFG = IngestConfig(workers=0)


def _pixels(seed: int, size: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 250, (size, size, 3), dtype=np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _tree(root: Path, files: dict[str, np.ndarray]) -> Path:
    for rel, pixels in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(pixels))
    return root


def _recipe_tree(root: Path, seeds: range, recipe: str = "vanilla") -> Path:
    """root/<recipe>/<good|bad>/<seed>.png: labels and recipe from folders, distinct random images."""
    files = {f"{recipe}/{'good' if s % 2 else 'bad'}/{s}.png": _pixels(s) for s in seeds}
    return _tree(root, files)


def _folder_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def prev(tmp_path: Path) -> Any:
    """The previous version: 40 items of one recipe, split by seed."""
    ingest(str(_recipe_tree(tmp_path / "raw1", range(40))), str(tmp_path / "v1"), CFG)
    return load_dataset(str(tmp_path / "v1"))


def _row(ds: Any, image_id: str) -> Any:
    rows = ds.manifest[ds.manifest["image_id"] == image_id]
    assert len(rows) == 1
    return rows.iloc[0]


def test_merge_adds_items_keeps_previous_splits_and_leaves_previous_alone(prev: Any, tmp_path: Path) -> None:
    before = _folder_digest(Path(prev.root))
    src = _recipe_tree(tmp_path / "raw2", range(100, 130), recipe="chocolate")
    report = ingest(str(src), str(tmp_path / "v2"), CFG, merge_with=prev.root)
    new = load_dataset(str(tmp_path / "v2"))

    assert _folder_digest(Path(prev.root)) == before and load_dataset(prev.root).version == prev.version
    assert len(new.manifest) == len(prev.manifest) + 30 == report.images
    merged = new.manifest.set_index("image_id")
    for row in prev.manifest.itertuples():
        assert merged.loc[row.image_id, "split"] == row.split
        assert merged.loc[row.image_id, "group_id"] == row.group_id
        assert merged.loc[row.image_id, "label"] == row.label
        # self-contained: PREV's images are copied into the new dataset, byte for byte
        assert (tmp_path / "v2" / row.path).read_bytes() == (Path(prev.root) / row.path).read_bytes()
    added = new.manifest[new.manifest["recipe"] == "chocolate"]
    assert len(added) == 30 and {"train", "test"} <= set(added["split"])
    assert report.merge["from_previous"] == 40 and report.merge["new_items"] == 30
    assert report.merge["relabelled"] == [] and report.merge["already_present"] == []
    per_split = report.merge["per_split"]
    assert sum(v.get("previous", 0) for v in per_split.values()) == 40
    assert sum(v.get("new", 0) for v in per_split.values()) == 30
    assert per_split["test"]["previous"] == int((prev.manifest["split"] == "test").sum())
    assert validate(str(tmp_path / "v2")).ok
    saved = json.loads((tmp_path / "v2" / "report.json").read_text())
    assert saved["merge"]["previous_version"] == prev.version and saved["merge"]["new_items"] == 30
    md = (tmp_path / "v2" / "report.md").read_text()
    assert "## Merged with the previous version" in md and "new items: 30" in md


def test_relabel_wins_and_is_reported_identical_labels_are_already_present(prev: Any, tmp_path: Path) -> None:
    rows = prev.manifest.sort_values("source_path")
    good = rows[rows["label"] == "good"].iloc[0]
    bad = rows[rows["label"] == "bad"].iloc[0]
    same = rows[rows["label"] == "bad"].iloc[1]
    seed_of = {r: int(Path(r).stem) for r in (good.source_path, bad.source_path, same.source_path)}
    src = tmp_path / "relabel"
    _tree(
        src,
        {
            "x_relabel.png": _pixels(seed_of[good.source_path]),
            "x_new_type.png": _pixels(seed_of[bad.source_path]),
            "x_same.png": _pixels(seed_of[same.source_path]),
            "x_new.png": _pixels(999),
        },
    )
    (src / "labels.csv").write_text(
        "file,label,recipe,defect_type\n"
        "x_relabel.png,bad,vanilla,spillage\n"
        "x_new_type.png,bad,chocolate,missing_topping\n"
        "x_same.png,bad,vanilla,\n"
        "x_new.png,good,vanilla,\n"
    )
    report = ingest(str(src), str(tmp_path / "v2"), CFG, merge_with=prev.root)
    new = load_dataset(str(tmp_path / "v2"))

    relabelled = {r["image_id"]: r for r in report.merge["relabelled"]}
    assert set(relabelled) == {good.image_id, bad.image_id}
    r = relabelled[good.image_id]
    assert r["old"] == {"label": "good", "recipe": "vanilla", "defect_type": ""}
    assert r["new"] == {"label": "bad", "recipe": "vanilla", "defect_type": "spillage"}
    assert r["split"] == good.split and r["previous_source_path"] == good.source_path
    assert r["source_path"] == "x_relabel.png"
    assert relabelled[bad.image_id]["new"] == {
        "label": "bad",
        "recipe": "chocolate",
        "defect_type": "missing_topping",
    }
    row = _row(new, good.image_id)
    assert (row.label, row.defect_type, row.split, row.label_source) == ("bad", "spillage", good.split, "csv")
    assert (row.source_path, row.group_id) == (good.source_path, good.group_id)
    assert _row(new, bad.image_id).recipe == "chocolate"
    # identical labels (an empty defect type is "not given", not a change): already present, row untouched
    assert [p["image_id"] for p in report.merge["already_present"]] == [same.image_id]
    assert _row(new, same.image_id).label_source == same.label_source
    assert report.merge["new_items"] == 1 and len(new.manifest) == len(prev.manifest) + 1
    md = report.to_markdown()
    assert "### Relabelled" in md and "label `good` -> `bad`" in md
    assert validate(str(tmp_path / "v2")).ok


def test_a_default_recipe_does_not_relabel_a_previous_recipe(prev: Any, tmp_path: Path) -> None:
    """A source with no recipe at all gets default_recipe; that is no information about PREV's items."""
    row = prev.manifest.sort_values("source_path").iloc[0]
    src = _tree(
        tmp_path / "flat",
        {
            f"{'good' if row.label == 'good' else 'nok'}_copy.png": _pixels(int(Path(row.source_path).stem)),
            "ok_new.png": _pixels(777),
        },
    )
    report = ingest(str(src), str(tmp_path / "v2"), CFG, merge_with=prev.root)
    assert [p["image_id"] for p in report.merge["already_present"]] == [row.image_id]
    assert _row(load_dataset(str(tmp_path / "v2")), row.image_id).recipe == "vanilla"


def test_near_duplicate_of_a_previous_item_joins_its_split(prev: Any, tmp_path: Path) -> None:
    m = prev.manifest.sort_values("source_path")
    test_item = m[m["split"] == "test"].iloc[0]
    train_item = m[m["split"] == "train"].iloc[0]
    files = {}
    for item, name in ((test_item, "near_test"), (train_item, "near_train")):
        near = np.clip(_pixels(int(Path(item.source_path).stem)).astype(int) + 2, 0, 255).astype(np.uint8)
        files[f"vanilla/{item.label}/{name}.png"] = near
    files.update({f"vanilla/{'good' if s % 2 else 'bad'}/{s}.png": _pixels(s) for s in range(200, 220)})
    report = ingest(str(_tree(tmp_path / "raw2", files)), str(tmp_path / "v2"), CFG, merge_with=prev.root)
    new = load_dataset(str(tmp_path / "v2")).manifest.set_index("source_path")

    for item, name in ((test_item, "near_test"), (train_item, "near_train")):
        landed = new.loc[f"vanilla/{item.label}/{name}.png"]
        assert (landed.split, landed.group_id) == (item.split, item.group_id)
    near = {d["source_path"]: d for d in report.merge["near_duplicates_of_previous"]}
    assert set(near) == {
        f"vanilla/{test_item.label}/near_test.png",
        f"vanilla/{train_item.label}/near_train.png",
    }
    assert near[f"vanilla/{test_item.label}/near_test.png"]["previous_source_paths"] == [
        test_item.source_path
    ]
    assert report.merge["per_split"]["test"]["near_duplicates_of_previous"] == 1
    assert not any("near duplicate of previous" in w for w in report.warnings)  # same labels: nothing to say
    assert report.merge["new_items"] == 22
    assert validate(str(tmp_path / "v2")).ok


def test_a_near_copy_labelled_otherwise_is_warned_about(prev: Any, tmp_path: Path) -> None:
    item = prev.manifest.sort_values("source_path").iloc[0]
    other = "good" if item.label == "bad" else "bad"
    near = np.clip(_pixels(int(Path(item.source_path).stem)).astype(int) + 2, 0, 255).astype(np.uint8)
    src = _tree(tmp_path / "raw2", {f"vanilla/{other}/near.png": near, "vanilla/good/new.png": _pixels(4242)})
    report = ingest(str(src), str(tmp_path / "v2"), CFG, merge_with=prev.root)
    [entry] = report.merge["near_duplicates_of_previous"]
    assert (entry["label"], entry["previous_labels"], entry["split"]) == (other, [item.label], item.split)
    assert any("near duplicate of previous item(s) labelled" in w for w in report.warnings)
    assert (
        _row(load_dataset(str(tmp_path / "v2")), item.image_id).label == item.label
    )  # PREV's row not relabelled


def test_version_is_deterministic_differs_from_previous_and_records_lineage(
    prev: Any, tmp_path: Path
) -> None:
    src = _recipe_tree(tmp_path / "raw2", range(300, 320))
    a = ingest(str(src), str(tmp_path / "a"), CFG, merge_with=prev.root)
    b = ingest(str(src), str(tmp_path / "b"), CFG, merge_with=prev.root)
    assert a.version == b.version != prev.version
    assert (
        ingest(str(src), str(tmp_path / "a"), CFG, merge_with=prev.root).version == a.version
    )  # re-run: same
    meta = load_dataset(str(tmp_path / "a")).meta
    assert meta["parent"] == {"version": prev.version, "dataset": prev.root}
    assert meta["lineage"] == [prev.version]
    assert "parent" not in prev.meta

    third = ingest(
        str(_recipe_tree(tmp_path / "raw3", range(400, 410))),
        str(tmp_path / "c"),
        CFG,
        merge_with=str(tmp_path / "a"),
    )
    meta3 = load_dataset(str(tmp_path / "c")).meta
    assert meta3["parent"]["version"] == a.version and meta3["lineage"] == [prev.version, a.version]
    assert third.merge["from_previous"] == 60 and validate(str(tmp_path / "c")).ok


def test_new_test_items_balance_the_test_split_without_moving_previous_ones(
    prev: Any, tmp_path: Path
) -> None:
    src = _tree(tmp_path / "raw2", {f"vanilla/bad/{s}.png": _pixels(s) for s in range(500, 540)})
    report = ingest(str(src), str(tmp_path / "v2"), CFG, merge_with=prev.root)
    new = load_dataset(str(tmp_path / "v2")).manifest
    old_test = set(prev.manifest.loc[prev.manifest["split"] == "test", "image_id"])
    assert old_test <= set(new.loc[new["split"] == "test", "image_id"])
    test = new[new["split"] == "test"]
    counts = test["label"].value_counts().to_dict()
    assert counts.get("bad", 0) == counts.get("good", 0)  # PREV's test was balanced, new bad ones left out
    assert report.unused and all(p.startswith("vanilla/bad/") for p in report.unused)


# --- errors: one line each, saying what to do ---------------------------------------------------------


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_previous_that_is_not_a_dataset_is_refused(tmp_path: Path) -> None:
    src = _recipe_tree(tmp_path / "raw", range(10))
    (tmp_path / "plain").mkdir()
    with pytest.raises(IngestError) as exc:
        ingest(str(src), str(tmp_path / "v2"), CFG, merge_with=str(tmp_path / "plain"))
    assert "not a readable LineGuard dataset" in _one_line(exc) and "previous dataset version" in _one_line(
        exc
    )
    with pytest.raises(IngestError, match="does not exist"):
        ingest(str(src), str(tmp_path / "v2"), CFG, merge_with=str(tmp_path / "missing"))
    assert not (tmp_path / "v2").exists()


def test_previous_as_or_around_the_output_is_refused(prev: Any, tmp_path: Path) -> None:
    src = _recipe_tree(tmp_path / "raw2", range(100, 110))
    before = _folder_digest(Path(prev.root))
    for out, words in (
        (prev.root, "is the --out folder"),
        (f"{prev.root}/v2", "inside the previous dataset"),
        (str(tmp_path), "inside --out"),
    ):
        with pytest.raises(IngestError) as exc:
            ingest(str(src), out, CFG, merge_with=prev.root, overwrite=True)
        assert words in _one_line(exc)
    assert _folder_digest(Path(prev.root)) == before


def test_a_different_class_set_is_refused(prev: Any, tmp_path: Path) -> None:
    src = _tree(tmp_path / "raw2", {"a.png": _pixels(600), "b.png": _pixels(601)})
    (src / "labels.csv").write_text("file,label,recipe\na.png,scratch,vanilla\nb.png,good,vanilla\n")
    with pytest.raises(IngestError) as exc:
        ingest(str(src), str(tmp_path / "v2"), CFG, merge_with=prev.root)
    assert "scratch" in _one_line(exc) and "does not have" in _one_line(exc)
    with pytest.raises(IngestError) as exc:
        ingest(
            str(src),
            str(tmp_path / "v2"),
            CFG.model_copy(update={"positive_class": "good"}),
            merge_with=prev.root,
        )
    assert "positive class 'bad'" in _one_line(exc) and "ingest.positive_class=bad" in _one_line(exc)
    assert not (tmp_path / "v2").exists()


def test_an_existing_different_dataset_at_out_needs_overwrite(prev: Any, tmp_path: Path) -> None:
    ingest(str(_recipe_tree(tmp_path / "other", range(700, 720))), str(tmp_path / "v2"), CFG)
    src = _recipe_tree(tmp_path / "raw2", range(100, 110))
    with pytest.raises(DatasetError) as exc:
        ingest(str(src), str(tmp_path / "v2"), CFG, merge_with=prev.root)
    assert "--overwrite" in _one_line(exc)
    report = ingest(str(src), str(tmp_path / "v2"), CFG, merge_with=prev.root, overwrite=True)
    assert load_dataset(str(tmp_path / "v2")).version == report.version


def test_a_source_that_adds_nothing_is_refused(prev: Any, tmp_path: Path) -> None:
    row = prev.manifest.iloc[0]
    src = _tree(
        tmp_path / "raw2", {f"vanilla/{row.label}/copy.png": _pixels(int(Path(row.source_path).stem))}
    )
    with pytest.raises(IngestError) as exc:
        ingest(str(src), str(tmp_path / "v2"), CFG, merge_with=prev.root)
    assert "adds nothing" in _one_line(exc) and prev.version in _one_line(exc)


# --- the CLI and the Label Studio round trip -------------------------------------------------------------


def test_cli_merge_with(prev: Any, tmp_path: Path) -> None:
    from lineguard.cli import app

    src = _recipe_tree(tmp_path / "raw2", range(100, 120), recipe="chocolate")
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "data",
            "ingest",
            str(src),
            "--out",
            str(tmp_path / "v2"),
            "--merge-with",
            prev.root,
            "--set",
            "ingest.workers=0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Merged with" in " ".join(result.output.split())
    assert load_dataset(str(tmp_path / "v2")).meta["parent"]["version"] == prev.version
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "v2")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "ingest", str(src), "--out", prev.root, "--merge-with", prev.root])
    assert result.exit_code != 0 and isinstance(result.exception, LineguardError)
    assert "is the --out folder" in str(result.exception)


def test_a_label_studio_export_merges_into_the_previous_dataset(tmp_path: Path) -> None:
    from lineguard.labelstudio import export_tasks, import_export

    # PREV: two recipes, labels and recipes from folders.
    prev_files = {
        f"{r}/{'good' if s % 2 else 'bad'}/{s}.png": _pixels(s)
        for r, seeds in (("Vanilla Sprinkles", range(0, 20)), ("Mint Chips", range(20, 40)))
        for s in seeds
    }
    ingest(str(_tree(tmp_path / "raw1", prev_files)), str(tmp_path / "v1"), CFG)
    prev = load_dataset(str(tmp_path / "v1"))
    assert set(prev.manifest["recipe"]) == {"vanilla_sprinkles", "mint_chips"}

    # Frames picked for labelling: a folder of PNGs grouped by recipe folder, no labels in the paths.
    photos = tmp_path / "photos"
    picked = {f"Vanilla Sprinkles/frame_{s}.png": _pixels(s) for s in range(800, 812)}
    picked["Mint Chips/frame_relabel.png"] = _pixels(21)  # a PREV good item, now judged bad
    _tree(photos, picked)
    tasks_file = tmp_path / "ls" / "tasks.json"
    export_tasks(str(photos), str(tasks_file))
    tasks = json.loads(tasks_file.read_text())
    truth = {
        t["data"]["source_path"]: (
            "bad"
            if "relabel" in t["data"]["source_path"]
            or int(t["data"]["source_path"].split("_")[-1][:-4]) % 3 == 0
            else "good",
            t["data"]["source_path"].split("/")[0],
        )
        for t in tasks
    }
    export = tmp_path / "ls" / "export.json"
    export.write_text(json.dumps(labelled_export(tasks, lambda t: (*truth[t["data"]["source_path"]], ""))))
    labels_csv = tmp_path / "labels.csv"
    parsed = import_export(str(export), str(labels_csv), str(photos))
    assert parsed.problems == [] and len(parsed.records) == 13

    report = ingest(str(labels_csv), str(tmp_path / "v2"), CFG, merge_with=prev.root, root=str(photos))
    new = load_dataset(str(tmp_path / "v2"))
    assert report.merge["new_items"] == 12 and report.merge["from_previous"] == 40
    relabel = report.merge["relabelled"]
    assert len(relabel) == 1 and relabel[0]["old"]["label"] == "good" and relabel[0]["new"]["label"] == "bad"
    assert (
        relabel[0]["new"]["recipe"] == "mint_chips"
        and relabel[0]["source_path"] == "Mint Chips/frame_relabel.png"
    )
    added = new.manifest[new.manifest["source_path"].str.startswith("Vanilla Sprinkles/frame_")]
    assert set(added["recipe"]) == {"vanilla_sprinkles"} and set(added["label_source"]) == {"csv"}
    kept = pd.merge(prev.manifest, new.manifest, on="image_id", suffixes=("_old", "_new"))
    assert len(kept) == 40 and (kept["split_old"] == kept["split_new"]).all()
    assert validate(str(tmp_path / "v2")).ok


def test_a_source_split_is_kept_for_new_items_even_without_train(prev: Any, tmp_path: Path) -> None:
    files = {f"test/{'good' if s % 2 else 'bad'}/{s}.png": _pixels(s) for s in range(900, 910)}
    report = ingest(str(_tree(tmp_path / "raw2", files)), str(tmp_path / "v2"), CFG, merge_with=prev.root)
    new = load_dataset(str(tmp_path / "v2")).manifest
    assert report.split_source == "folders" and report.merge["new_items"] == 10
    assert set(new.loc[new["source_path"].str.startswith("test/"), "split"]) == {"test"}
    assert validate(str(tmp_path / "v2")).ok


def test_a_new_image_bridging_previous_items_in_two_splits_is_left_out(tmp_path: Path) -> None:
    """PREV holds a and a+6 (not near duplicates: thumbnails 6 grey levels apart) in two splits;
    a+3 is within 3 of both, so it can join neither split without a leak."""
    files = {}
    for s in range(30):
        files[f"vanilla/{'good' if s % 2 else 'bad'}/{s}a.png"] = _pixels(s)
        files[f"vanilla/{'good' if s % 2 else 'bad'}/{s}b.png"] = _pixels(s) + 6
    ingest(str(_tree(tmp_path / "raw1", files)), str(tmp_path / "v1"), CFG)
    m = load_dataset(str(tmp_path / "v1")).manifest.set_index("source_path")
    split = {p: m.loc[p, "split"] for p in m.index}
    s = next(
        s
        for s in range(30)
        if len({split[f"vanilla/{'good' if s % 2 else 'bad'}/{s}{x}.png"] for x in "ab"} - {"unused"}) == 2
    )
    label = "good" if s % 2 else "bad"
    src = _tree(
        tmp_path / "raw2",
        {f"vanilla/{label}/bridge.png": _pixels(s) + 3, "vanilla/good/other.png": _pixels(99)},
    )
    report = ingest(str(src), str(tmp_path / "v2"), CFG, merge_with=str(tmp_path / "v1"))
    new = load_dataset(str(tmp_path / "v2")).manifest.set_index("source_path")
    assert new.loc[f"vanilla/{label}/bridge.png", "split"] == "unused"
    [near] = report.merge["near_duplicates_of_previous"]
    assert near["split"] == "unused" and len(near["previous_source_paths"]) == 2
    assert any("left out of every split" in w for w in report.warnings)
    assert validate(str(tmp_path / "v2")).ok


def test_previous_images_hash_the_same_with_a_process_pool(tmp_path: Path) -> None:
    from lineguard.ingest.merge import hash_previous

    files = {f"vanilla/{'good' if s % 2 else 'bad'}/{s}.png": _pixels(s, size=12) for s in range(260)}
    ingest(str(_tree(tmp_path / "raw", files)), str(tmp_path / "v1"), CFG)
    ds = load_dataset(str(tmp_path / "v1"))
    serial = hash_previous(ds, CFG)
    pooled = hash_previous(ds, CFG.model_copy(update={"workers": 2}))
    assert serial.canonical == pooled.canonical and serial.phash == pooled.phash
    assert set(serial.canonical.values()) == set(
        ds.manifest["image_id"]
    )  # PNGs ingest wrote: canonical == stored
    assert all(np.array_equal(serial.thumb[i], pooled.thumb[i]) for i in serial.thumb)
