"""The real ``lineguard`` CLI on bad input: one clear error line and exit code 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_simple_dataset


def _lineguard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "300"}
    if os.environ.get("PYTHONPATH"):  # the code under test, when it is not the installed one
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run([sys.executable, "-m", "lineguard.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture(scope="module")
def ds_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "ds"
    make_simple_dataset(path, per_class=4, recipes=1, size=16)
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "{tmp}/missing"], "does not exist"),
        (["--data", "{tmp}"], "is not a LineGuard dataset"),
        (["--data", "{ds}", "--set", "train.model=resnet999"], "unknown model 'resnet999'"),
        (["--data", "{ds}", "--set", "train.lrr=0.1"], "did you mean 'lr'"),
        (["--data", "{ds}", "--set", "train.epochs=-1"], "train.epochs"),
        (["--data", "{ds}", "--tracking-uri", "http://127.0.0.1:9"], "unreachable"),
        (["--data", "{ds}", "--init-from", "nothing/here.pth"], "does not exist"),
        (["--data", "{ds}", "--set", "train.budget_s=0"], "'train.budget_s' input should be greater than 0"),
        (["--data", "{ds}", "--set", "train.budget_s=0.000001"], "train.budget_s=1e-06 s is too small to train"),
        (["--data", "{ds}", "--weights", "nothing/here.pth"], "does not exist"),
    ],
)
def test_train_bad_input_is_one_clear_error(tmp_path: Path, ds_path: Path, args: list[str], message: str) -> None:
    filled = [a.format(tmp=tmp_path, ds=ds_path) for a in args]
    out = _lineguard("train", *filled, "--set", f"workdir={tmp_path / 'work'}", cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in " ".join(out.stderr.split())
    assert "Traceback" not in out.stderr


def test_runs_show_unknown_run_is_a_clear_error(tmp_path: Path) -> None:
    out = _lineguard("runs", "show", "0" * 32, "--set", f"workdir={tmp_path / 'work'}", cwd=tmp_path)
    assert out.returncode == 2 and "not found" in out.stderr and "Traceback" not in out.stderr


def test_help_texts_explain_the_commands(tmp_path: Path) -> None:
    out = _lineguard("train", "--help", cwd=tmp_path)
    assert out.returncode == 0 and "--init-from" in out.stdout and "--teacher" in out.stdout
