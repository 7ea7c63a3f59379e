"""Package-wide promises: importing does nothing, every command explains itself."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import lineguard
from lineguard.cli import app

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(lineguard.__path__, prefix="lineguard.") if ".dashboard" not in m.name
)


def test_importing_any_module_creates_nothing(tmp_path: Path) -> None:
    """No folders, files, logging handlers or MLflow clients at import time (STYLE 5)."""
    code = (
        "import importlib, logging, sys\n"
        f"for name in {MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "assert not logging.getLogger().handlers, logging.getLogger().handlers\n"
        "assert 'mlflow' not in sys.modules, 'a module imported mlflow at import time'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []


def _commands(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [(*prefix, c.name or c.callback.__name__) for c in group.registered_commands if c.callback]
    for sub in group.registered_groups:
        if sub.typer_instance is not None and sub.name:
            found += _commands(sub.typer_instance, (*prefix, sub.name))
    return found


@pytest.mark.parametrize("command", _commands(app), ids=" ".join)
def test_every_command_has_help(command: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    # A newcomer needs a sentence, not just a usage line.
    assert len(result.output.split("Usage", 1)[1]) > 80


def test_version_and_unknown_command() -> None:
    runner = CliRunner()
    assert lineguard.__version__ in runner.invoke(app, ["--version"]).output
    assert runner.invoke(app, ["no-such-command"]).exit_code != 0


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian:\n  lr: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "lineguard.cli", "config", "show", "--config", str(bad)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "did you mean 'train'" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
