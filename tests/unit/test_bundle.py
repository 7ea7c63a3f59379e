"""The bundle: round trip, and every untrusted variant refused with a clear error (TARGETS R3, R4)."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lineguard import export as ex
from lineguard.edge import BundleError, Decision, load_bundle
from lineguard.edge.predictor import verify_bundle
from tests.unit._edge_bundles import PARAMS, make_toy_bundle, rewrite_meta, toy_onnx

DESIGN_KEYS = {"schema", "name", "version", "created_at", "model", "classes", "positive_class", "recipes",
               "preprocess", "decision", "lineage", "evaluation", "reference", "files", "integrity"}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_bundle(tmp_path_factory.mktemp("bundles") / "toy")


@pytest.fixture
def copy(bundle_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(bundle_dir, dest)
    return dest


def _rehash(folder: Path, name: str) -> None:
    digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()

    def change(meta: dict) -> None:
        meta["files"][name] = digest
        if meta["model"]["file"] == name:
            meta["model"]["sha256"] = digest

    rewrite_meta(folder, change)


def test_round_trip_keeps_every_field(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    assert set(b.meta) >= DESIGN_KEYS
    assert b.meta["schema"] == 2
    assert b.meta["model"]["format"] == "onnx" and b.meta["model"]["opset"] == 18
    assert b.meta["model"]["inputs"] == {"image": [None, 3, 32, 32]}
    assert b.meta["model"]["outputs"] == {"logits": [None, 2], "embedding": [None, 3]}
    assert b.classes == ("good", "bad") and b.positive_index == 1
    assert b.preprocess == PARAMS
    d = b.decision
    assert d.threshold_for("vanilla") == 0.3 and d.threshold_for("chocolate") == 0.5 and d.threshold_for(None) == 0.5
    assert d.temperature == 2.0
    assert b.meta["decision"] == d.to_dict()  # the bundle's block is the record, field for field
    assert set(b.meta["files"]) == {"model.onnx", "reference.npz", "golden.npz"}
    ref = b.load_arrays("reference.npz")
    assert ref["embedding_cov"].shape == (3, 3) and ref["image_stats"].shape == (10, 2)
    assert list(ref["image_stat_names"]) == ["brightness", "contrast"]
    assert b.meta["reference"]["image_stats"]["brightness"]["quantiles"]["0.5"] == pytest.approx(4.5)
    assert sum(b.meta["reference"]["score_hist"]["per_class"]["bad"]) == 5


def test_tar_round_trip_and_verify(tmp_path: Path) -> None:
    archive = make_toy_bundle(tmp_path / "toy.tar.gz")
    assert archive.is_file() and tarfile.is_tarfile(archive)
    b = load_bundle(archive)
    assert b.meta["name"] == "toy" and b.model_path.is_file()
    report = verify_bundle(archive)
    assert report["passed"] and report["max_abs_logit_diff"] == 0.0 and report["decision_agreement"] == 1.0


def test_existing_bundle_is_not_overwritten_and_failed_write_leaves_nothing(bundle_dir: Path, tmp_path: Path) -> None:
    before = (bundle_dir / "bundle.json").read_text()
    with pytest.raises(ex.ExportError, match="already exists"):
        make_toy_bundle(bundle_dir)
    assert (bundle_dir / "bundle.json").read_text() == before
    with pytest.raises(ex.ExportError, match="positive class"):
        ex.write_bundle(tmp_path / "bad", toy_onnx(tmp_path / "m.onnx"), classes=["good", "bad"],
                        positive_class="defect", preprocess=PARAMS, golden=ex.synthetic_golden(PARAMS, 2),
                        expected={"logits": np.zeros((2, 2))}, parity={}, decision=Decision(0.5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_tampered_model_is_refused(copy: Path) -> None:
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-5] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"sha256 of 'model.onnx'.*modified or corrupted"):
        load_bundle(copy)


def test_pickle_file_is_refused_even_when_listed(copy: Path) -> None:
    (copy / "model.pkl").write_bytes(b"\x80\x04K\x01.")
    _rehash(copy, "model.pkl")
    with pytest.raises(BundleError, match="pickle-capable"):
        load_bundle(copy)


def test_non_onnx_model_format_is_refused(copy: Path) -> None:
    rewrite_meta(copy, lambda m: m["model"].update(format="torchscript"))
    with pytest.raises(BundleError, match="only runs 'onnx'"):
        load_bundle(copy)


def test_unlisted_file_is_refused(copy: Path) -> None:
    (copy / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match="does not list"):
        load_bundle(copy)


def test_truncated_onnx_is_refused_even_with_matching_hash(copy: Path) -> None:
    data = (copy / "model.onnx").read_bytes()
    (copy / "model.onnx").write_bytes(data[: len(data) // 2])
    _rehash(copy, "model.onnx")
    with pytest.raises(BundleError, match="not a loadable ONNX model"):
        load_bundle(copy)


def test_missing_preprocess_block_is_refused(copy: Path) -> None:
    rewrite_meta(copy, lambda m: m.pop("preprocess"))
    with pytest.raises(BundleError, match="no 'preprocess' block"):
        load_bundle(copy)


def test_invalid_preprocess_block_is_refused(copy: Path) -> None:
    rewrite_meta(copy, lambda m: m["preprocess"].update(std=[0, 1, 1]))
    with pytest.raises(BundleError, match="preprocess"):
        load_bundle(copy)


def test_preprocess_size_must_match_the_model(copy: Path) -> None:
    rewrite_meta(copy, lambda m: m["preprocess"].update(size=[64, 64]))
    with pytest.raises(BundleError, match="model input"):
        load_bundle(copy)


def test_unknown_schema_is_refused(copy: Path) -> None:
    rewrite_meta(copy, lambda m: m.update(schema=99))
    with pytest.raises(BundleError, match="unknown bundle schema 99"):
        load_bundle(copy)


def test_bad_threshold_is_refused(copy: Path) -> None:
    rewrite_meta(copy, lambda m: m["decision"]["per_recipe"].update(vanilla=1.5))
    with pytest.raises(BundleError, match="outside"):
        load_bundle(copy)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"no bundle\.json"):
        load_bundle(tmp_path / "empty")
    (tmp_path / "x.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(BundleError, match="cannot be opened"):
        load_bundle(tmp_path / "x.tar.gz")


def _tar_with(tmp_path: Path, bundle_dir: Path, extra: tarfile.TarInfo, data: bytes = b"x") -> Path:
    out = tmp_path / "evil.tar.gz"
    with tarfile.open(out, "w:gz") as tf:
        for f in sorted(bundle_dir.iterdir()):
            tf.add(f, arcname=f.name)
        extra.size = len(data) if extra.isfile() else 0
        tf.addfile(extra, io.BytesIO(data) if extra.isfile() else None)
    return out


@pytest.mark.parametrize(
    ("member", "kind", "message"),
    [
        ("../escaped.txt", tarfile.REGTYPE, "escapes the bundle folder"),
        ("sub/../../escaped.txt", tarfile.REGTYPE, "escapes the bundle folder"),
        ("/tmp/absolute.txt", tarfile.REGTYPE, "absolute path"),
        ("link.onnx", tarfile.SYMTYPE, "is a link"),
        ("hard.onnx", tarfile.LNKTYPE, "is a link"),
    ],
)
def test_unsafe_archive_members_are_refused(
    bundle_dir: Path, tmp_path: Path, member: str, kind: bytes, message: str
) -> None:
    info = tarfile.TarInfo(member)
    info.type = kind
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "/etc/passwd"
    archive = _tar_with(tmp_path, bundle_dir, info)
    with pytest.raises(BundleError, match=message):
        load_bundle(archive)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_verify_detects_parity_drift(copy: Path) -> None:
    golden = dict(np.load(copy / "golden.npz", allow_pickle=False))
    golden["expected_logits"] = golden["expected_logits"] + np.float32(0.01)
    np.savez_compressed(copy / "golden.npz", **golden)
    _rehash(copy, "golden.npz")
    with pytest.raises(BundleError, match="fails its parity re-check"):
        verify_bundle(copy)


def test_rebundle_swaps_model_and_records_parity(bundle_dir: Path, tmp_path: Path) -> None:
    other = toy_onnx(tmp_path / "other.onnx", k=6.5)
    out = ex.rebundle(bundle_dir, tmp_path / "int8", other, "int8-qdq", version="2")
    b = load_bundle(out)
    assert b.precision == "int8-qdq" and b.version == "2"
    assert b.meta["parity"]["reference"] == "base-bundle"
    assert 0 < b.meta["parity"]["max_abs_logit_diff"] < 1
    assert b.meta["lineage"]["base_bundle"] == "toy:1"
    assert b.decision == load_bundle(bundle_dir).decision
    assert verify_bundle(out)["passed"]
