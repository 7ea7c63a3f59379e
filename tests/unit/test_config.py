"""The typed config: defaults, YAML, overrides, unknown keys rejected with a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from lineguard.config import ConfigError, LineguardConfig, load_config, save_config


def test_defaults_are_valid_and_frozen() -> None:
    cfg = load_config(None)
    assert isinstance(cfg, LineguardConfig)
    assert cfg.evaluate.cost.false_reject == cfg.evaluate.cost.missed_defect == 1.0
    with pytest.raises(ValidationError):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "lineguard.yaml"
    path.write_text("train:\n  lr: 0.01\n  epochs: 3\npreprocess:\n  size: [96, 96]\n")
    cfg = load_config(path, ["train.epochs=5", "augment.strength=0.5", "preprocess.resize=stretch"])
    assert cfg.train.lr == 0.01
    assert cfg.train.epochs == 5
    assert cfg.augment.strength == 0.5
    assert cfg.preprocess.size == (96, 96)
    assert cfg.preprocess.resize == "stretch"


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.learning_rat'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"did you mean 'epochs'\?"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"did you mean 'train'\?"):
        load_config(None, ["trian.lr=3"])
    with pytest.raises(ConfigError, match=r"did you mean 'false_reject'\?"):
        load_config(None, ["evaluate.cost.false_rejects=3"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: [1, 2\n", "not valid YAML"),
        ("- a\n- b\n", "must hold a mapping"),
        ("train:\n  lr: -1\n", "train.lr"),
        ("train:\n  epochs: many\n", "train.epochs"),
    ],
)
def test_bad_files_give_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_bad_override_syntax_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"is a value, not a section"):
        load_config(None, ["workdir.x=1"])


def test_empty_file_is_defaults_and_save_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    cfg = load_config(path, ["train.seed=7"])
    out = tmp_path / "resolved.yaml"
    save_config(cfg, out)
    assert load_config(out) == cfg


def test_tracking_uri_defaults_to_sqlite_in_workdir(tmp_path: Path) -> None:
    cfg = load_config(None, [f"workdir={tmp_path}"])
    assert cfg.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    cfg2 = load_config(None, ["tracking.uri=http://127.0.0.1:5000"])
    assert cfg2.tracking_uri() == "http://127.0.0.1:5000"
