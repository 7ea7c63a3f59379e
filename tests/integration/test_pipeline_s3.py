"""The pipeline with its artefacts in blob storage (``pipeline.artifacts=s3://...``), against moto's
S3-compatible server: what every Kubeflow step does on a cluster, where steps share nothing but URLs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lineguard.config import load_config
from tests.e2e._tiny import TINY

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_every_artefact_goes_to_blob_storage_and_the_cache_still_holds(s3_bucket: str, tmp_path: Path) -> None:
    from lineguard import pipeline, storage
    from lineguard.edge import load_bundle

    root = f"{s3_bucket}/lineguard"
    cfg = load_config(None, [*TINY, f"workdir={tmp_path / 'work'}", f"pipeline.artifacts={root}"])
    first = pipeline.run(cfg, say=lambda _m: None)
    for name in ("synth", "ingest", "evaluate", "export", "compress", "release", "edge"):
        assert first.outputs[name].startswith(root + "/"), (name, first.outputs[name])
    release = first.outputs["release"]
    record = json.loads(storage.read_text(f"{release}/release.json"))
    local = tmp_path / "bundle.tar.gz"
    local.write_bytes(storage.read_bytes(f"{release}/bundle.tar.gz"))
    assert load_bundle(local).meta["lineage"]["run_id"] == record["run_id"] == first.outputs["train"]
    assert storage.exists(f"{release}/report.md")

    second = pipeline.run(cfg, say=lambda _m: None)
    assert second.ran == [] and second.outputs == first.outputs

    # A changed object in the store is noticed: the step that made it runs again.
    report = f"{first.outputs['evaluate']}/report.md"
    storage.write_text(report, storage.read_text(report) + "\nedited by hand\n")
    third = pipeline.run(cfg, say=lambda _m: None)
    assert third.ran == ["evaluate"]
