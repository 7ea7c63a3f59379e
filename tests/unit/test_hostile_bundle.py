"""Hostile bundles, images and frame sizes on the edge: fail closed, bounded, signed (TARGETS R2, R4; issue 11)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lineguard.cli import app
from lineguard.edge import BundleError, Predictor, load_bundle
from lineguard.edge.bundle import BundleLimits
from lineguard.edge.predictor import ImageFileError, NonFiniteScoreError
from lineguard.edge.signing import Trust, generate_keypair
from lineguard.export.bundle import sign_bundle
from tests.unit._edge_bundles import grey, make_toy_bundle, rewrite_meta, toy_onnx


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_bundle(tmp_path_factory.mktemp("hostile") / "toy")


@pytest.fixture
def copy(bundle_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(bundle_dir, dest)
    return dest


# --- every byte that decides is covered --------------------------------------------------------------


@pytest.mark.parametrize("where", ["../outside.onnx", "ABS"])
def test_a_model_outside_the_bundle_never_runs(copy: Path, tmp_path: Path, where: str) -> None:
    outside = toy_onnx(tmp_path / "outside.onnx", k=-50.0)  # an "always good" model
    name = str(outside) if where == "ABS" else where

    def point_outside(meta: dict) -> None:
        meta["model"]["file"] = name
        meta["model"].pop("sha256")
        meta["files"].pop("model.onnx")

    rewrite_meta(copy, point_outside)
    (copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match="plain file name inside the bundle"):
        load_bundle(copy)
    result = CliRunner().invoke(app, ["bundle", "verify", str(copy)])
    assert result.exit_code == 1 and "FAILED" in result.output


def test_a_model_no_hash_covers_is_refused(copy: Path) -> None:
    def unlisted(meta: dict) -> None:
        meta["files"].pop("model.onnx")
        meta["model"].pop("sha256")

    rewrite_meta(copy, unlisted)
    with pytest.raises(BundleError, match=r"does not list|not listed in files"):
        load_bundle(copy)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["decision"].update(default_threshold=0.99),
        lambda m: m.update(positive_class="good"),
        lambda m: m["parity"].update(atol=1e9),
        lambda m: m["preprocess"].update(mean=[0.1, 0.1, 0.1]),
    ],
)
def test_any_edit_of_bundle_json_is_caught(copy: Path, change) -> None:
    rewrite_meta(copy, change, reseal=False)
    with pytest.raises(BundleError, match="edited after export"):
        load_bundle(copy)


def test_nan_preprocessing_is_refused_and_a_nan_score_is_an_error_not_an_accept(copy: Path, bundle_dir: Path,
                                                                                tmp_path: Path) -> None:
    # NaN is not JSON: no integrity digest can cover it, so such a bundle.json is refused as it stands.
    rewrite_meta(copy, lambda m: m["preprocess"].update(std=[float("nan"), 0.5, 0.5]), reseal=False)
    with pytest.raises(BundleError, match="canonical form"):
        load_bundle(copy)
    predictor = Predictor(bundle_dir)
    predictor._runner.logits = lambda x: np.full((len(x), 2), np.nan, np.float32)  # type: ignore[method-assign]
    with pytest.raises(NonFiniteScoreError, match="not finite"):
        predictor.predict(grey(200))
    with pytest.raises(NonFiniteScoreError, match="item 0"):
        predictor.predict([grey(200), grey(10)])
    from PIL import Image

    Image.fromarray(grey(200)).save(tmp_path / "a.png")
    with pytest.raises(NonFiniteScoreError) as exc:
        predictor.predict_file(tmp_path / "a.png")
    assert exc.value.reason == "non_finite_score" and str(tmp_path / "a.png") in str(exc.value)


def test_digest_pins_one_bundle(bundle_dir: Path, copy: Path) -> None:
    b = load_bundle(bundle_dir, check_model=False)
    assert b.digest.startswith("sha256:") and len(b.digest) == 71
    assert load_bundle(bundle_dir, check_model=False, expected_digest=b.digest).digest == b.digest
    rewrite_meta(copy, lambda m: m.update(version="2"))
    with pytest.raises(BundleError, match="is pinned"):
        load_bundle(copy, check_model=False, trust=Trust(digest=b.digest))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(files=["model.onnx"]), "'files' block"),
        (lambda m: m.update(model="model.onnx"), "'model' block"),
        (lambda m: m["decision"].update(per_recipe=[0.5]), "decision 'per_recipe' must map"),
        (lambda m: m["files"].update({"sub/x": "0" * 64}), "not a plain file name"),
        (lambda m: m["files"].update({"model.onnx": 5}), "not a sha256"),
        (lambda m: m.update(classes="goodbad"), "'classes' must be a list"),
        (lambda m: m["preprocess"].update(size=[1e6, 1e6]), "preprocess"),
    ],
)
def test_malformed_bundle_json_fields_are_named(copy: Path, change, message: str) -> None:
    rewrite_meta(copy, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


def test_malformed_parity_block_is_named_by_verify(copy: Path) -> None:
    from lineguard.edge.predictor import verify_bundle

    rewrite_meta(copy, lambda m: m.update(parity={"atol": "lots"}))
    with pytest.raises(BundleError, match="parity tolerance"):
        verify_bundle(copy)


# --- bounded ----------------------------------------------------------------------------------------


def test_huge_or_deep_bundle_json_is_refused(copy: Path) -> None:
    with open(copy / "bundle.json", "ab") as f:
        f.write(b" " * 2_000_000)
    with pytest.raises(BundleError, match="limit"):
        load_bundle(copy, limits=BundleLimits(max_json_bytes=1_000_000))
    (copy / "bundle.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="nests too deeply"):
        load_bundle(copy)


def _tar(path: Path, members: list[tuple[str, bytes | None]], base: Path | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        if base is not None:
            for f in sorted(base.iterdir()):
                tf.add(f, arcname=f.name)
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def test_bundle_tars_with_clashing_duplicate_or_countless_members_are_refused(bundle_dir: Path, tmp_path: Path) -> None:
    clash = _tar(tmp_path / "clash.tar.gz", [("x", b"file"), ("x/y", b"inside a file")], bundle_dir)
    with pytest.raises(BundleError, match=r"inside a file|twice"):
        load_bundle(clash)
    clash2 = _tar(tmp_path / "clash2.tar.gz", [("d", None), ("d", b"now a file")], bundle_dir)
    with pytest.raises(BundleError, match="twice"):
        load_bundle(clash2)
    dup = _tar(tmp_path / "dup.tar.gz", [("model.onnx", b"second copy")], bundle_dir)
    with pytest.raises(BundleError, match="twice"):
        load_bundle(dup)
    many = _tar(tmp_path / "many.tar.gz", [(f"e{i}", b"") for i in range(5_000)])
    with pytest.raises(BundleError, match="more than 256 members"):
        load_bundle(many)
    assert not list(Path(tmp_path).glob("x*"))


def test_special_files_and_npz_bombs_in_a_bundle_are_refused(copy: Path) -> None:
    os.mkfifo(copy / "pipe")
    with pytest.raises(BundleError, match="not a regular file"):
        load_bundle(copy)
    (copy / "pipe").unlink()
    b = load_bundle(copy, check_model=False)
    with pytest.raises(BundleError, match="unpacks to"):
        b.load_arrays("golden.npz", max_bytes=1_000)


@pytest.mark.timeout(60)
def test_predict_reads_only_regular_files_within_limits(bundle_dir: Path, tmp_path: Path) -> None:
    predictor = Predictor(bundle_dir)
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "pipe.png")
    for name in ("zero.png", "pipe.png"):
        with pytest.raises(ImageFileError) as exc:
            predictor.predict_file(tmp_path / name)
        assert exc.value.reason == "not_a_file"
    with open(tmp_path / "huge.png", "wb") as f:
        f.truncate(3_000_000_000)
    with pytest.raises(ImageFileError) as exc:
        predictor.predict_file(tmp_path / "huge.png")
    assert exc.value.reason == "file_too_large"
    result = CliRunner().invoke(app, ["predict", str(bundle_dir), str(tmp_path / "pipe.png"), str(tmp_path / "huge.png")])
    assert result.exit_code == 1 and "2 of 2 file(s) could not be decided" in result.output


def test_bench_frame_size_and_batch_are_bounded(bundle_dir: Path) -> None:
    from lineguard import LineguardError
    from lineguard.edge.bench import bench, check_frame_size

    for size in ((100_000, 100_000), (4, 4), (8000, 8000)):
        with pytest.raises(LineguardError, match="out of bounds"):
            check_frame_size(size)
    with pytest.raises(LineguardError, match="larger than 1024"):
        bench(bundle_dir, batch=100_000, repeats=1, warmup=0)
    result = CliRunner().invoke(app, ["bench", str(bundle_dir), "--frame-size", "100000x100000"])
    assert result.exit_code != 0 and "out of bounds" in str(result.exception or result.output)


def test_export_overwrite_replaces_only_a_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    from lineguard.export import ExportError

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(ExportError, match="only replaces a LineGuard bundle"):
        make_toy_bundle_at(photos, tmp_path)
    assert (photos / "holiday.jpg").read_bytes() == b"precious"
    existing = tmp_path / "b"
    shutil.copytree(bundle_dir, existing)
    make_toy_bundle_at(existing, tmp_path)  # a bundle is replaced
    assert load_bundle(existing, check_model=False).digest


def make_toy_bundle_at(out: Path, tmp_path: Path) -> Path:
    from lineguard import export as ex

    b = load_bundle(make_toy_bundle(tmp_path / "src-bundle")) if not (tmp_path / "src-bundle").exists() \
        else load_bundle(tmp_path / "src-bundle")
    return ex.rebundle(b.path, out, b.model_path, "fp32", overwrite=True)


def test_limits_config_matches_the_edge_defaults() -> None:
    from lineguard.config import LimitsConfig
    from lineguard.edge.predictor import MAX_IMAGE_BYTES
    from lineguard.preprocess import DEFAULT_MAX_PIXELS

    lim, edge = LimitsConfig(), BundleLimits()
    assert (lim.max_bundle_json_bytes, lim.max_bundle_files, lim.max_bundle_bytes) == (
        edge.max_json_bytes, edge.max_files, edge.max_bytes)
    assert lim.max_image_bytes == MAX_IMAGE_BYTES and lim.max_pixels == DEFAULT_MAX_PIXELS


# --- signing ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    good, good_pub = generate_keypair(d / "release.pem")
    other, other_pub = generate_keypair(d / "other.pem")
    return {"key": good, "pub": good_pub, "other": other, "other_pub": other_pub}


def test_sign_verify_load_and_every_refusal(copy: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    trusted = Trust(keys=(str(keys["pub"]),))
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(copy, trust=trusted)  # unsigned, keys configured: refused
    doc = sign_bundle(copy, keys["key"])
    b = load_bundle(copy, trust=trusted)
    assert b.signed_by == doc["key_id"] and b.digest == doc["digest"]
    with pytest.raises(BundleError, match="not one of the 1 trusted key"):
        load_bundle(copy, trust=Trust(keys=(str(keys["other_pub"]),)))  # wrong key
    # Tampered bundle.json, resealed so its integrity holds: the signature no longer covers it.
    tampered = tmp_path / "tampered"
    shutil.copytree(copy, tampered)
    rewrite_meta(tampered, lambda m: m["decision"].update(default_threshold=0.99))
    with pytest.raises(BundleError, match="signs another bundle"):
        load_bundle(tampered, trust=trusted)
    # Tampered model: its hash no longer matches (and rehashing it changes the digest the signature covers).
    model = tmp_path / "model"
    shutil.copytree(copy, model)
    data = bytearray((model / "model.onnx").read_bytes())
    data[-5] ^= 0xFF
    (model / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"sha256 of .model\.onnx."):
        load_bundle(model, trust=trusted)
    # A forged signature value for the right digest and key id.
    forged = tmp_path / "forged"
    shutil.copytree(copy, forged)
    sig = json.loads((forged / "bundle.sig.json").read_text())
    sig["signature"] = "A" * 86 + "=="
    (forged / "bundle.sig.json").write_text(json.dumps(sig))
    with pytest.raises(BundleError, match="does not verify"):
        load_bundle(forged, trust=trusted)
    # Without keys configured the signed bundle still loads (signature not required).
    assert load_bundle(copy).signed_by is None


def test_signed_tar_bundle_and_the_cli(bundle_dir: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    tar = make_toy_bundle(tmp_path / "toy.tar.gz", tar=True)
    runner = CliRunner()
    res = runner.invoke(app, ["bundle", "sign", str(tar), "--key", str(keys["key"])])
    assert res.exit_code == 0, res.output
    Image.fromarray(grey(200)).save(tmp_path / "a.png")
    ok = runner.invoke(app, ["predict", str(tar), str(tmp_path / "a.png"), "--trust-key", str(keys["pub"])])
    assert ok.exit_code == 0 and "REJECT" in ok.output
    verified = runner.invoke(app, ["bundle", "verify", str(tar), "--trust-key", str(keys["pub"])])
    assert verified.exit_code == 0 and "signed by sha256:" in verified.output
    refused = runner.invoke(app, ["bundle", "verify", str(bundle_dir), "--trust-key", str(keys["pub"])])
    assert refused.exit_code == 1 and "not signed" in refused.output
    via_config = runner.invoke(app, ["predict", str(bundle_dir), str(tmp_path / "a.png"),
                                     "--set", f"trust.keys=[{keys['other_pub']}]"])
    assert via_config.exit_code != 0 and "not signed" in str(via_config.exception)
    with pytest.raises(Exception, match="already exists"):
        generate_keypair(keys["key"])
