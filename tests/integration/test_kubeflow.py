"""`lineguard pipeline compile --target kubeflow`: the IR's structure, and the same definition run
locally, offline, through kfp's SubprocessRunner (container components cannot run here: no Docker).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lineguard.config import load_config, parse_config
from lineguard.pipeline import resolve

pytest.importorskip("kfp", reason="kfp is not installed (pip install 'lineguard[pipelines]')")

from tests.e2e._tiny import TINY

TOY_TASKS = {"start", "synth", "ingest", "validate", "train", "evaluate", "export", "compress", "gate", "promote",
             "release", "finish"}


def _compile(tmp_path: Path, *sets: str) -> dict[str, Any]:
    out = tmp_path / "pipeline.yaml"
    args = [a for kv in [*TINY, f"workdir={tmp_path / 'work'}", *sets] for a in ("--set", kv)]
    result = subprocess.run([sys.executable, "-m", "lineguard.cli", "pipeline", "compile", "--target", "kubeflow",
                             "--out", str(out), "--image", "registry.example/lineguard:1.2", *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(yaml.safe_load(out.read_text()))


def test_the_compiled_pipeline_runs_every_step_in_the_project_image_and_installs_nothing(tmp_path: Path) -> None:
    ir = _compile(tmp_path)
    tasks = ir["root"]["dag"]["tasks"]
    assert set(tasks) == TOY_TASKS
    assert {c.removeprefix("comp-") for c in ir["components"]} == TOY_TASKS
    for name, executor in ir["deploymentSpec"]["executors"].items():
        container = executor["container"]
        assert container["image"] == "registry.example/lineguard:1.2", name
        command = " ".join(container["command"])
        assert "pip install" not in command and "kfp.dsl.executor_main" in command, name
    for name, task in tasks.items():
        assert task["cachingOptions"] == {}, name  # enableCaching false is written as an empty block

    # The DAG follows the data: each step waits for the ones whose outputs it takes.
    def after(name: str) -> set[str]:
        return set(tasks[name].get("dependentTasks", []))

    assert after("synth") == {"start"} and after("ingest") == {"start", "synth"}
    assert {"ingest", "validate"} <= after("train")
    assert {"train", "validate"} <= after("export") and {"compress", "validate"} <= after("gate")
    assert after("promote") == {"gate", "start"} and {"compress", "gate", "promote"} <= after("release")
    assert after("finish") == {"release", "start"}

    # Parameters come from the config: the resolved config (one line of JSON every step validates) and the data.
    params = ir["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"config", "data"}
    shipped = parse_config(params["config"]["defaultValue"])
    assert shipped == resolve(load_config(None, [*TINY, f"workdir={tmp_path / 'work'}"]))


def test_with_photos_the_pipeline_ingests_them_and_draws_nothing(tmp_path: Path) -> None:
    ir = _compile(tmp_path, "pipeline.data=s3://bucket/photos", "pipeline.compress=false", "pipeline.baseline=true")
    tasks = ir["root"]["dag"]["tasks"]
    assert set(tasks) == (TOY_TASKS - {"synth", "compress"}) | {"baseline"}
    assert ir["root"]["inputDefinitions"]["parameters"]["data"]["defaultValue"] == "s3://bucket/photos"
    source = tasks["ingest"]["inputs"]["parameters"]["source"]
    assert source == {"componentInputParameter": "data"}
    assert {"export", "validate"} <= set(tasks["gate"]["dependentTasks"])


def test_an_unknown_target_is_refused(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "lineguard.cli", "pipeline", "compile", "--target", "airflow",
                             "--out", str(tmp_path / "p.yaml")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--target 'airflow' is not supported; expected: kubeflow" in result.stderr


@pytest.mark.slow
def test_the_same_definition_runs_locally_through_kfps_subprocess_runner(tmp_path: Path) -> None:
    from kfp import local

    from lineguard import tracking
    from lineguard.edge import load_bundle
    from lineguard.pipeline.kubeflow import pipeline_function

    cfg = load_config(None, [*TINY, f"workdir={tmp_path / 'work'}", "pipeline.compress=false"])
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root"))
    outcome = pipeline_function(cfg)()
    release = Path(outcome.output)
    assert release == tmp_path / "work" / "release"
    bundle = load_bundle(release / "bundle.tar.gz")
    record = json.loads((release / "release.json").read_text())
    assert record["gate"]["passed"] is True and bundle.meta["lineage"]["run_id"] == record["run_id"]

    # The same MLflow layout as a local run: one FINISHED parent, a child run per step.
    runs = tracking.list_runs(cfg, max_results=200)
    parents = [r for r in runs if r.tags.get(tracking.TAG_KIND) == "pipeline"]
    assert len(parents) == 1 and parents[0].status == "FINISHED"
    steps = {r.tags.get(tracking.TAG_PIPELINE_STEP) for r in runs
             if r.tags.get("mlflow.parentRunId") == parents[0].run_id}
    assert steps == TOY_TASKS - {"start", "finish", "compress"}
