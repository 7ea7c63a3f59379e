"""A split the user gives (train/val/test folders, a CSV split column) is kept, and checked (issue 9 section 6)."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lineguard.config import IngestConfig
from lineguard.ingest import IngestError, ingest
from lineguard.manifest import load_dataset, validate

CFG = IngestConfig(workers=0)


def _png(seed: int, size: int = 40) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _split_tree(root: Path, counts: dict[str, int], folders: dict[str, str] | None = None) -> Path:
    """root/<split folder>/<class>/<n>.png, distinct random images."""
    folders = folders or {s: s for s in counts}
    seed = 0
    for split, n in counts.items():
        for label in ("good", "defect"):
            d = root / folders[split] / label
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                seed += 1
                (d / f"{i}.png").write_bytes(_png(seed))
    return root


def _split_counts(url: str) -> dict[str, int]:
    return dict(Counter(load_dataset(url).manifest["split"]))


def test_split_folders_above_class_folders_are_kept(tmp_path: Path) -> None:
    src = _split_tree(tmp_path / "src", {"train": 10, "val": 3, "test": 4},
                      folders={"train": "Train", "val": "validation", "test": "TEST"})
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    ds = load_dataset(str(tmp_path / "ds"))
    assert report.split_source == "folders" and report.layout == "class_folders"
    assert _split_counts(str(tmp_path / "ds")) == {"train": 20, "val": 6, "test": 8}
    assert set(ds.manifest["label"]) == {"good", "bad"} and set(ds.manifest["recipe"]) == {"default"}
    for row in ds.manifest.itertuples():
        assert row.source_path.split("/")[0].lower()[:2] == {"train": "tr", "val": "va", "test": "te"}[row.split]
    assert validate(str(tmp_path / "ds")).ok
    # Same source, same version; and ingest.user_split=ignore splits by seed instead.
    assert ingest(str(src), str(tmp_path / "ds2"), CFG).version == report.version
    seeded = ingest(str(src), str(tmp_path / "ds3"), CFG.model_copy(update={"user_split": "ignore"}))
    assert seeded.split_source == "seed" and seeded.version != report.version


def test_csv_split_column_is_kept_and_bad_values_are_refused_per_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "img").mkdir(parents=True)
    rows = ["file,label,split"]
    for i in range(24):
        (src / "img" / f"{i}.png").write_bytes(_png(100 + i))
        split = "train" if i < 14 else ("valid" if i < 18 else "test")
        rows.append(f"img/{i}.png,{'ok' if i % 2 else 'nok'},{split}")
    (src / "img" / "x.png").write_bytes(_png(999))
    (src / "img" / "y.png").write_bytes(_png(998))
    rows += ["img/x.png,ok,holdout", "img/y.png,ok,"]
    (src / "labels.csv").write_text("\n".join(rows) + "\n")
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    assert report.split_source == "csv"
    assert _split_counts(str(tmp_path / "ds")) == {"train": 14, "val": 4, "test": 6}
    reasons = {r["source_path"]: r["reason"] for r in report.rejected}
    assert reasons == {"img/x.png": "bad_split", "img/y.png": "no_split"}


def test_leaks_across_the_users_split_are_found_and_kept_out_of_test(tmp_path: Path) -> None:
    src = _split_tree(tmp_path / "src", {"train": 8, "test": 4})
    # An exact copy of a train image in test, and a near copy (one pixel changed) of another.
    (src / "test" / "good" / "copy.png").write_bytes((src / "train" / "good" / "0.png").read_bytes())
    near = np.asarray(Image.open(src / "train" / "good" / "1.png")).copy()
    near[0, 0] = (near[0, 0].astype(int) + 9) % 256
    buf = io.BytesIO()
    Image.fromarray(near).save(buf, format="PNG")
    (src / "test" / "good" / "near.png").write_bytes(buf.getvalue())
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    kinds = sorted(leak["kind"] for leak in report.split_leaks)
    assert kinds == ["exact_duplicate", "near_duplicate"]
    ds = load_dataset(str(tmp_path / "ds"))
    split_of = dict(zip(ds.manifest["source_path"], ds.manifest["split"], strict=True))
    assert split_of["train/good/0.png"] == "train" and "test/good/copy.png" not in split_of
    assert split_of["test/good/near.png"] == "unused" and split_of["train/good/1.png"] == "train"
    # No val folder: val is carved from train by group and seed, test kept as given.
    counts = _split_counts(str(tmp_path / "ds"))
    assert counts["test"] == 8 and counts["val"] > 0 and counts["train"] + counts["val"] == 16
    assert any("no val split" in w for w in report.warnings)
    assert validate(str(tmp_path / "ds")).ok
    md = (tmp_path / "ds" / "report.md").read_text()
    assert "## Split leaks" in md and "test/good/near.png" in md


@pytest.mark.parametrize("missing", ["train", "test"])
def test_a_user_split_without_train_or_test_is_one_clear_error(tmp_path: Path, missing: str) -> None:
    counts = {"train": 5, "val": 2, "test": 3}
    counts.pop(missing)
    src = _split_tree(tmp_path / "src", counts)
    with pytest.raises(IngestError, match=f"has no {missing} images .*user_split=ignore") as exc:
        ingest(str(src), str(tmp_path / "ds"), CFG)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "ds").exists()
