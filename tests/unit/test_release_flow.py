"""Small promises of the release and demo plumbing, without training anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


class _MlflowError(Exception):
    def __init__(self, message: str, error_code: str) -> None:
        super().__init__(message)
        self.error_code = error_code


class _Client:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_model_version_by_alias(self, *_: Any) -> Any:
        raise self.error

    def search_model_versions(self, *_: Any) -> Any:
        raise self.error


@pytest.mark.parametrize("lookup", ["alias", "run"])
def test_an_unreachable_registry_is_an_error_not_not_registered(lookup: str, monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    from lineguard import tracking
    from lineguard.config import load_config

    cfg = load_config(None, [f"workdir={tmp_path}"])

    def look() -> object:
        if lookup == "alias":
            return tracking.get_model_version_by_alias(cfg, "champion")
        return tracking.find_version(cfg, "0" * 32)

    absent = _MlflowError("Registered Model with name=lineguard not found", "RESOURCE_DOES_NOT_EXIST")
    monkeypatch.setattr(tracking, "client", lambda _cfg: _Client(absent))
    assert look() is None
    down = _MlflowError("API request to http://mlflow:5000 failed with exception ConnectionError", "INTERNAL_ERROR")
    monkeypatch.setattr(tracking, "client", lambda _cfg: _Client(down))
    with pytest.raises(tracking.TrackingError, match="ConnectionError"):
        look()


def test_the_demo_config_is_the_same_from_python_and_the_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lineguard import pipeline
    from lineguard.cli import app

    cfg = pipeline.demo_config(quick=True, workdir=tmp_path, overrides=["train.epochs=3"])
    resolved = pipeline.resolve(cfg)  # the toy cones: the demo's presets, where the config sets nothing
    assert resolved.compress.distill is False and resolved.compress.on_no_fit == "fp32"
    assert cfg.synth.recipes == 2 and cfg.train.epochs == 3 and Path(cfg.workdir) == tmp_path
    seen: list[Any] = []

    def fake_run(config: Any, **_: Any) -> Any:
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(pipeline, "run", fake_run)
    CliRunner().invoke(app, ["demo", "--quick", "--workdir", str(tmp_path), "--set", "train.epochs=3"])
    assert seen and seen[0] == cfg


def test_the_report_leaves_matplotlibs_backend_alone() -> None:
    import matplotlib

    from lineguard.evaluate.report import figure_png, new_figure

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a notebook's or a user's choice; the old report forced Agg over it
    try:
        fig, ax = new_figure(figsize=(2, 2))
        ax.plot([0, 1], [0, 1])
        assert figure_png(fig).startswith(b"\x89PNG")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
