"""Datasets on an S3-compatible server (moto's, started by the test): storage, manifest, ingest, labelling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lineguard import storage
from lineguard.manifest import DatasetError, encode_png, load_dataset
from tests.conftest import draw_simple_item, make_simple_dataset

pytestmark = pytest.mark.integration


def _boto(s3_env: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=s3_env)


def test_read_write_exists_walk(s3_bucket: str) -> None:
    base = f"{s3_bucket}/runs/r1"
    assert not storage.exists(base)
    storage.write_bytes(storage.join(base, "model.onnx"), b"\x00\x01onnx")
    storage.write_text(storage.join(base, "metrics", "eval.json"), '{"ba": 0.99}')
    storage.write_bytes(storage.join(base, "Mint Chips", "a b.png"), b"png")
    assert storage.exists(base) and storage.exists(storage.join(base, "model.onnx"))
    assert not storage.exists(storage.join(base, "nope.bin"))
    assert storage.read_bytes(storage.join(base, "model.onnx")) == b"\x00\x01onnx"
    assert json.loads(storage.read_text(storage.join(base, "metrics/eval.json"))) == {"ba": 0.99}
    assert list(storage.walk_files(base)) == ["Mint Chips/a b.png", "metrics/eval.json", "model.onnx"]
    # overwriting replaces the whole object
    storage.write_bytes(storage.join(base, "model.onnx"), b"v2")
    assert storage.read_bytes(storage.join(base, "model.onnx")) == b"v2"
    storage.remove(storage.join(base, "metrics"), recursive=True)
    assert list(storage.walk_files(base)) == ["Mint Chips/a b.png", "model.onnx"]


def test_errors_are_user_errors(s3_bucket: str) -> None:
    with pytest.raises(storage.StorageError, match="does not exist"):
        storage.read_bytes(f"{s3_bucket}/missing.bin")
    storage.write_bytes(f"{s3_bucket}/dir/x.bin", b"x")
    with pytest.raises(storage.StorageError, match="is a folder"):
        storage.read_bytes(f"{s3_bucket}/dir")
    storage.write_bytes(f"{s3_bucket}/dir/empty.png", b"")  # a zero-byte file is a file, not a folder
    assert storage.read_bytes(f"{s3_bucket}/dir/empty.png") == b""
    with pytest.raises(storage.StorageError, match="does not exist"):
        list(storage.walk_files(f"{s3_bucket}/nothing-here"))
    with pytest.raises(storage.StorageError, match="cannot write"):
        storage.write_bytes("s3://no-such-bucket-lg/x.bin", b"x")
    with pytest.raises(storage.StorageError, match="does not exist"):
        storage.read_bytes("s3://no-such-bucket-lg/x.bin")


def test_changes_by_another_writer_are_seen_at_once(s3_bucket: str, s3_env: str) -> None:
    """No stale listing: another process (edge sync, a second ingest) writes and deletes objects."""
    bucket = s3_bucket.removeprefix("s3://")
    storage.write_bytes(f"{s3_bucket}/d/a.bin", b"a")
    assert list(storage.walk_files(f"{s3_bucket}/d")) == ["a.bin"]
    assert not storage.exists(f"{s3_bucket}/d/b.bin")
    client = _boto(s3_env)
    client.put_object(Bucket=bucket, Key="d/b.bin", Body=b"b")
    client.delete_object(Bucket=bucket, Key="d/a.bin")
    assert storage.exists(f"{s3_bucket}/d/b.bin")
    assert not storage.exists(f"{s3_bucket}/d/a.bin")
    assert list(storage.walk_files(f"{s3_bucket}/d")) == ["b.bin"]


def test_endpoint_from_fsspec_variable(s3_bucket: str, s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """FSSPEC_S3_ENDPOINT_URL works as well as AWS_ENDPOINT_URL (and wins over it)."""
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", s3_env)
    s3fs.S3FileSystem.clear_instance_cache()
    storage.write_bytes(f"{s3_bucket}/via-fsspec.bin", b"ok")
    assert storage.read_bytes(f"{s3_bucket}/via-fsspec.bin") == b"ok"


def test_dataset_write_and_load(s3_bucket: str, tmp_path: Path) -> None:
    local = make_simple_dataset(tmp_path / "ds", per_class=3, recipes=2, size=24)
    remote_url = f"{s3_bucket}/datasets/cones-v1"
    remote = make_simple_dataset(remote_url, per_class=3, recipes=2, size=24)  # type: ignore[arg-type]
    assert remote.root == remote_url
    assert remote.version == local.version
    again = load_dataset(remote_url)
    assert again.version == local.version and again.meta["version"] == local.version
    assert again.classes == ["good", "bad"] and again.recipes == ["recipe_0", "recipe_1"]
    assert set(storage.walk_files(remote_url)) == {
        "manifest.parquet",
        "dataset.json",
        *local.manifest["path"],
    }
    row = again.split("train").iloc[0]
    assert np.array_equal(again.read_image(row["path"]), local.read_image(row["path"]))
    assert len(again.read_images(again.split("test"))) == len(local.split("test"))

    # immutable: the same version again is a no-op, a different one is refused
    assert make_simple_dataset(remote_url, per_class=3, recipes=2, size=24).version == local.version  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="already holds dataset version"):
        make_simple_dataset(remote_url, per_class=2, recipes=2, size=24)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(f"{s3_bucket}/datasets/nope")


def test_a_tampered_remote_dataset_is_refused(s3_bucket: str) -> None:
    url = f"{s3_bucket}/ds"
    make_simple_dataset(url, per_class=2, recipes=1, size=16)  # type: ignore[arg-type]
    meta = json.loads(storage.read_text(f"{url}/dataset.json"))
    meta["version"] = "0" * 16
    storage.write_text(f"{url}/dataset.json", json.dumps(meta))
    with pytest.raises(DatasetError, match="modified after it was written"):
        load_dataset(url)


def _write_raw_source(url: str, per_class: int = 3) -> dict[str, str]:
    """A class-per-folder source in the bucket: <recipe>/<label>/<n>.png; returns path -> label."""
    rng = np.random.default_rng(1)
    truth = {}
    for r, recipe in enumerate(("Vanilla Sprinkles", "mint-chips")):
        for label, folder in (("good", "OK"), ("bad", "NOK")):
            for i in range(per_class):
                rel = f"{recipe}/{folder}/cone_{i:03d}.png"
                storage.write_bytes(
                    storage.join(url, rel), encode_png(draw_simple_item(rng, 32, r, label == "good"))
                )
                truth[rel] = label
    return truth


def test_ingest_from_s3_into_s3(s3_bucket: str) -> None:
    ingest_mod = pytest.importorskip("lineguard.ingest")
    src, out = f"{s3_bucket}/raw", f"{s3_bucket}/datasets/from-s3"
    truth = _write_raw_source(src)
    report = ingest_mod.ingest(src, out)
    ds = load_dataset(out)
    assert report.version == ds.version
    assert dict(zip(ds.manifest["source_path"], ds.manifest["label"], strict=True)) == truth
    assert set(ds.manifest["recipe"]) == {"vanilla_sprinkles", "mint_chips"}
    # same source, same version (re-ingest into the same place is a no-op)
    assert ingest_mod.ingest(src, out).version == ds.version


def test_label_studio_round_trip_on_s3(s3_bucket: str) -> None:
    """Tasks for a dataset in a bucket keep s3:// URLs; the export resolves back under the dataset only."""
    from lineguard.labelstudio import export_tasks, parse_export

    ds = make_simple_dataset(f"{s3_bucket}/ds", per_class=2, recipes=1, size=16)  # type: ignore[arg-type]
    summary = export_tasks(ds.root, f"{s3_bucket}/labelling/tasks.json")
    assert storage.exists(f"{s3_bucket}/labelling/labelling-config.xml")
    tasks = json.loads(storage.read_text(summary.tasks_path))
    assert all(t["data"]["image"].startswith(f"{ds.root}/images/") for t in tasks)
    outside = {"id": 99, "data": {"image": f"{s3_bucket}/labelling/tasks.json"}}
    for i, t in enumerate([*tasks, outside]):
        t["id"] = i + 1
        t["annotations"] = [
            {
                "id": 100 + i,
                "result": [
                    {
                        "from_name": "label",
                        "to_name": "image",
                        "type": "choices",
                        "value": {"choices": ["bad"]},
                    }
                ],
                "was_cancelled": False,
                "ground_truth": False,
                "updated_at": "2026-06-01T00:00:00Z",
            }
        ]
    storage.write_text(f"{s3_bucket}/labelling/export.json", json.dumps([*tasks, outside]))
    records, problems = parse_export(f"{s3_bucket}/labelling/export.json", ds.root)
    assert {r.source_path for r in records} == set(ds.manifest["path"])
    assert {r.label for r in records} == {"bad"}
    assert [(p.task_id, p.kind) for p in problems] == [(str(len(tasks) + 1), "unresolvable")]


def test_ingest_a_label_studio_export_stored_in_s3(s3_bucket: str) -> None:
    ingest_mod = pytest.importorskip("lineguard.ingest")
    src = f"{s3_bucket}/raw"
    truth = _write_raw_source(src, per_class=2)
    # Label Studio labels the files with s3:// URLs (a cloud source storage); one task is hostile.
    tasks = [
        {
            "id": i,
            "data": {"image": storage.join(src, rel)},
            "annotations": [
                {
                    "id": 1000 + i,
                    "result": [
                        {
                            "from_name": "label",
                            "to_name": "image",
                            "type": "choices",
                            "value": {"choices": [label]},
                        }
                    ],
                    "was_cancelled": False,
                    "ground_truth": False,
                    "updated_at": "2026-06-01T00:00:00Z",
                }
            ],
        }
        for i, (rel, label) in enumerate(sorted(truth.items()), start=1)
    ]
    tasks.append(
        {"id": 99, "data": {"image": f"{src}/../secret.png"}, "annotations": tasks[0]["annotations"]}
    )
    storage.write_text(f"{s3_bucket}/export.json", json.dumps(tasks))
    report = ingest_mod.ingest(f"{s3_bucket}/export.json", f"{s3_bucket}/ds", root=src)
    ds = load_dataset(f"{s3_bucket}/ds")
    assert dict(zip(ds.manifest["source_path"], ds.manifest["label"], strict=True)) == truth
    assert set(ds.manifest["label_source"]) == {"labelstudio"}
    assert any("outside_root" in r.get("reason", "") for r in report.rejected)


def test_a_missing_backend_names_the_package() -> None:
    import importlib.util

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    with pytest.raises(storage.StorageError, match=r"needs gcsfs \(pip install gcsfs\)"):
        storage.exists("gs://bucket/datasets/x")
