"""station.yaml: every key typed, unknown keys refused with a suggestion, one-line errors, CLI values on top."""

from __future__ import annotations

from pathlib import Path

import pytest

from lineguard.edge.runtime import RuntimeSettings
from lineguard.edge.station import StationConfigError, load_station_config

FULL = """
station: cell-3
bundle: /opt/b.tar.gz
recipe: vanilla
mode: triggered
threads: 2
batch: 4
trigger_wait_s: 1.5
max_frames: 100
drain_s: 1.0
state_dir: /var/lib/lineguard
source:
  input: 0
  frame_timeout_s: 0.8
  reconnect_max_s: 3
sinks:
  - kind: jsonl
    path: out.jsonl
  - kind: webhook
    name: mes
    url: http://127.0.0.1:9/hook
  - kind: webhook
    name: quality
    url: http://127.0.0.1:9/q
controls:
  - kind: mqtt
    host: 127.0.0.1
store:
  path: cell-3.db
  synchronous: FULL
  retention_days: 7
  sampling:
    pass_share: 0.1
sync:
  url: s3://bucket/line
  interval_s: 5
api:
  port: 8089
  hot_swap: true
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "station.yaml"
    p.write_text(text)
    return p


def test_a_full_station_yaml_loads_with_every_section(tmp_path: Path) -> None:
    cfg = load_station_config(_write(tmp_path, FULL))
    assert cfg.runtime_settings() == RuntimeSettings(station="cell-3", recipe="vanilla", mode="triggered", threads=2,
                                                     batch=4, trigger_wait_s=1.5, max_frames=100)
    assert cfg.source.input == "0" and cfg.source.options() == {"frame_timeout_s": 0.8, "reconnect_max_s": 3.0}
    assert [s.sink_name for s in cfg.sinks] == ["jsonl", "mes", "quality"]
    assert cfg.sinks[1].spec_options() == {"url": "http://127.0.0.1:9/hook", "name": "mes"}
    assert cfg.controls[0].kind == "mqtt" and cfg.controls[0].options() == {"host": "127.0.0.1"}
    assert (cfg.store.synchronous, cfg.store.sampling.pass_share, cfg.store.sampling.rejects) == ("FULL", 0.1, True)
    assert cfg.sync.url == "s3://bucket/line" and cfg.api.port == 8089 and cfg.api.host == "127.0.0.1"
    assert cfg.state_path == Path("/var/lib/lineguard")


def test_defaults_and_command_line_values_on_top(tmp_path: Path) -> None:
    cfg = load_station_config(_write(tmp_path, "station: a\nsource: line.avi\n"),
                              {"source.input": "other.avi", "recipe": "chocolate", "store.path": str(tmp_path / "s.db"),
                               "max_frames": None, "source.loop": True},
                              [{"kind": "jsonl", "path": "-"}])
    assert (cfg.station, cfg.source.input, cfg.source.loop, cfg.recipe) == ("a", "other.avi", True, "chocolate")
    assert cfg.mode == "free" and cfg.max_frames is None and cfg.batch == 8 and [s.kind for s in cfg.sinks] == ["jsonl"]
    assert cfg.state_path == tmp_path  # the folder ledger sits beside the store by default
    assert load_station_config().station == "station"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sourse: x.avi\n", "unknown key 'sourse'; did you mean 'source'?"),
        ("source:\n  input: 0\n  frame_timout_s: 1\n", "unknown key 'source.frame_timout_s'; did you mean 'frame_timeout_s'?"),
        ("store:\n  sampling:\n    rejets: false\n", "unknown key 'store.sampling.rejets'; did you mean 'rejects'?"),
        ("mode: sometimes\n", "'mode' input should be 'free' or 'triggered' (got 'sometimes')"),
        ("station: line/1\n", "'station' must be a plain name"),
        ("threads: 0\n", "'threads' input should be greater than or equal to 1"),
        ("api:\n  port: 70000\n", "'api.port' input should be less than or equal to 65535"),
        ("sinks:\n  - kind: jsonl\n  - kind: jsonl\n", "sink name 'jsonl' appears twice"),
        ("sinks:\n  - path: x\n", "'sinks.0.kind' field required"),
        ("controls:\n  - kind: plc\n", "'controls.0.kind' input should be 'mqtt' or 'modbus'"),
        ("- a\n- b\n", "must be a mapping of keys"),
        ("station: [unclosed\n", "is not valid YAML"),
    ],
)
def test_bad_station_yaml_is_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(StationConfigError) as err:
        load_station_config(_write(tmp_path, text))
    assert message in str(err.value) and "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_yaml_alias_bombs_and_huge_files_are_refused_unexpanded(tmp_path: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    with pytest.raises(StationConfigError, match="expands to more than 10,000 values"):
        load_station_config(_write(tmp_path, bomb))
    big = tmp_path / "big.yaml"
    big.write_text("#" * 1_000_001)
    with pytest.raises(StationConfigError, match="at most 1,000,000"):
        load_station_config(big)
    with pytest.raises(StationConfigError, match="not found"):
        load_station_config(tmp_path / "missing.yaml")
