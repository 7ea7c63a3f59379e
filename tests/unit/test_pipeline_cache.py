"""The pipeline's pure parts: fingerprints, the step record, the lock, the toy presets, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lineguard.config import ConfigError, load_config
from lineguard.pipeline import STEPS, TOY_PRESETS, resolve
from lineguard.pipeline.cache import (
    PipelineError,
    StepCache,
    code_version,
    digest,
    locked,
    new_record,
    tree_hash,
)


def test_tree_hash_follows_content_and_names_not_times(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "good").mkdir(parents=True)
    (root / "good" / "a.png").write_bytes(b"one")
    first = tree_hash(str(root))
    assert first is not None and tree_hash(str(root)) == first
    (root / "good" / "a.png").write_bytes(b"one")  # rewritten, same bytes: same hash
    assert tree_hash(str(root)) == first
    (root / "good" / "a.png").write_bytes(b"two")
    assert tree_hash(str(root)) != first
    (root / "good" / "a.png").write_bytes(b"one")
    (root / "good" / "a.png").rename(root / "good" / "b.png")  # same bytes, another name
    assert tree_hash(str(root)) != first
    assert tree_hash(str(tmp_path / "missing")) is None
    assert tree_hash(str(root / "good" / "b.png")) is not None  # a single file


def test_code_version_is_stable_and_covers_the_package() -> None:
    assert code_version() == code_version() and len(code_version()) == 64


def test_the_step_record_round_trips_and_says_what_changed(tmp_path: Path) -> None:
    cache = StepCache.open(tmp_path)
    parts = {"code": "c1", "config.train": "t1", "input.dataset": "d1"}
    cache.put("train", new_record(parts, "run-1", "run-1", 1.234))
    cache.fail("evaluate", "boom")
    again = StepCache.open(tmp_path)
    rec = again.steps["train"]
    assert (rec.output, rec.key, rec.seconds) == ("run-1", digest(parts), 1.23)
    assert rec.changed({**parts, "config.train": "t2"}) == ["config.train"]
    assert rec.changed({"code": "c1"}) == ["config.train", "input.dataset"]
    assert again.failed is not None and again.failed["step"] == "evaluate"
    again.put("evaluate", new_record({}, "x", "x", 0.0))  # the failed step finishing clears the failure
    assert StepCache.open(tmp_path).failed is None
    assert (tmp_path / "state.json").stat().st_size < 4000  # small: no outputs' contents, only references


def test_an_unreadable_record_is_set_aside_and_every_step_runs(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    cache = StepCache.open(tmp_path)
    assert cache.steps == {} and "unreadable" in cache.notes[0]
    assert not (tmp_path / "state.json").exists() and list(tmp_path.glob("state.json.unreadable-*"))
    (tmp_path / "state.json").write_text(json.dumps({"schema": 99, "steps": {}}))
    assert "schema 99" in StepCache.open(tmp_path).notes[0]


def test_two_runs_cannot_share_a_workdir(tmp_path: Path) -> None:
    with locked(tmp_path / "pipeline"), pytest.raises(PipelineError, match="another pipeline run"), \
            locked(tmp_path / "pipeline"):
        pass
    with locked(tmp_path / "pipeline"):  # released after the block
        pass


def test_toy_presets_fill_only_what_the_config_leaves_unset() -> None:
    toy = resolve(load_config(None, []))
    assert toy.train.epochs == TOY_PRESETS["train"]["epochs"] and "epochs" in toy.train.model_fields_set
    assert toy.synth.messy is True and toy.compress.distill is False and toy.compress.on_no_fit == "fp32"
    mine = resolve(load_config(None, ["train.budget_s=240", "compress.distill=true"]))
    assert mine.train.budget_s == 240 and mine.compress.distill is True and mine.compress.on_no_fit == "fp32"
    assert "epochs" not in mine.train.model_fields_set  # its own budget plans the epochs
    photos = resolve(load_config(None, []), data="photos/")
    assert photos.pipeline.data == "photos/" and photos.train.budget_s == 240 and photos.compress.distill is True
    assert "epochs" not in photos.train.model_fields_set
    assert resolve(toy) == toy  # idempotent


def test_every_step_keys_on_sections_that_exist() -> None:
    sections = set(load_config(None, []).to_dict())
    for name, (keys, kind) in STEPS.items():
        assert set(keys) <= sections, name
        assert kind in ("tree", "value", "run", "verdict", "champion"), name


@pytest.mark.parametrize(("override", "expected"), [
    ("pipeline.tun=true", "unknown config key 'pipeline.tun'; did you mean 'tune'?"),
    ("pipeline.compress=maybe", "'pipeline.compress' input should be a valid boolean"),
    ("ingest.layout=folders", "input should be 'auto', 'rules' or 'class_folders'"),
])
def test_an_invalid_config_names_the_key_and_what_is_allowed(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert expected in str(err.value)


def test_force_refuses_a_step_that_does_not_exist(tmp_path: Path) -> None:
    from lineguard import pipeline

    cfg = load_config(None, [f"workdir={tmp_path}"])
    with pytest.raises(PipelineError, match="--force trian: no such step; steps: synth, ingest, validate, train"):
        pipeline.run(cfg, force=["trian"], say=lambda _m: None)


def test_steps_receive_only_the_keys_the_config_sets() -> None:
    """A step parses its config text back: a default written out would come back "set" and switch
    the time budget (an explicit train.epochs) and the auto recipe's choices off."""
    from lineguard.config import parse_config
    from lineguard.pipeline import demo_config, resolve
    from lineguard.pipeline.steps import config_text

    cfg = parse_config(config_text(resolve(demo_config(overrides=["train.budget_s=90"]))))
    assert "epochs" not in cfg.train.model_fields_set
    assert cfg.train.budget_s == 90.0 and "budget_s" in cfg.train.model_fields_set
    assert not {"size", "color"} & cfg.preprocess.model_fields_set
    assert cfg.to_dict() == resolve(demo_config(overrides=["train.budget_s=90"])).to_dict()  # only "set" differs
    quick = parse_config(config_text(resolve(demo_config(quick=True))))
    assert quick.train.epochs == 8 and "epochs" in quick.train.model_fields_set
