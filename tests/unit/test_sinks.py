"""Sinks without a server: JSON lines (file and stdout), the config path (SinkSpec, open_sink, --sink) and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lineguard import LineguardError
from lineguard.edge.outbox import OutboxMessage, SinkError, SinkRejected
from lineguard.edge.sinks import (
    JsonLinesSink,
    ModbusMap,
    MqttControl,
    MqttSink,
    SinkConfigError,
    SinkSpec,
    WebhookSink,
    _consecutive_runs,
    _recipe_from_payload,
    open_sink,
    parse_sink,
)


def message(i: int, **payload: object) -> OutboxMessage:
    body = {"station": "st1", "frame_id": f"f{i}", "decision": "accept", "score": 0.125, **payload}
    return OutboxMessage(id=i, sink="jsonl", key=f"st1:f{i}", payload=body, attempts=0, created_at=0.0)


def test_jsonl_file_appends_one_object_per_line_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "out" / "decisions.jsonl"
    sink = JsonLinesSink(path)
    sink.send(message(1))
    sink.send(message(2, recipe="mint"))
    sink.close()
    again = JsonLinesSink(path, fsync=True)  # reopening appends
    again.send(message(3))
    again.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["key"] for r in rows] == ["st1:f1", "st1:f2", "st1:f3"]
    assert rows[1] == {**message(2, recipe="mint").payload, "key": "st1:f2"}


def test_jsonl_a_torn_last_line_does_not_swallow_the_next(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"key":"st1:f1"}\n{"key":"st1:f2","sco')  # a crash mid-write
    sink = JsonLinesSink(path)
    sink.send(message(3))
    sink.close()
    lines = path.read_text().splitlines()
    assert lines[1] == '{"key":"st1:f2","sco' and json.loads(lines[2])["key"] == "st1:f3"


def test_jsonl_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    sink = open_sink(SinkSpec("jsonl", {"path": "-"}))
    sink.send(message(1))
    sink.send(message(2))
    sink.close()
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["key"] for line in out] == ["st1:f1", "st1:f2"]


def test_jsonl_payload_that_is_not_json_is_rejected_for_good(tmp_path: Path) -> None:
    sink = JsonLinesSink(tmp_path / "d.jsonl")
    with pytest.raises(SinkRejected, match="not JSON-safe"):
        sink.send(message(1, score=float("nan")))
    with pytest.raises(SinkRejected, match="not JSON-safe"):
        sink.send(message(2, stats=object()))
    sink.close()
    with pytest.raises(SinkError, match="closed"):  # a closed sink is a failure, never a write to stdout
        sink.send(message(3))


def test_jsonl_unwritable_path_is_a_one_line_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SinkConfigError, match=r"jsonl sink: cannot open .*file/sub/d.jsonl"):
        JsonLinesSink(blocker / "sub" / "d.jsonl")


@pytest.mark.parametrize(("spec", "pattern"), [
    (SinkSpec("mqqt", {}), r"unknown sink kind 'mqqt' \(did you mean 'mqtt'\?\); expected one of: jsonl, webhook, mqtt, modbus"),
    (SinkSpec("webhook", {}), r"sink 'webhook': option 'url' is required"),
    (SinkSpec("webhook", {"url": "http://x", "timout_s": 1}), r"unknown option 'timout_s' \(did you mean 'timeout_s'\?\)"),
    (SinkSpec("webhook", {"url": "ftp://x"}), r"not an http:// or https:// URL"),
    (SinkSpec("webhook", {"url": "http://x", "timeout_s": "2"}), r"option 'timeout_s' must be a number, got '2'"),
    (SinkSpec("webhook", {"url": "http://x", "timeout_s": 0}), r"timeout_s must be > 0"),
    (SinkSpec("mqtt", {"port": "1883"}), r"option 'port' must be an integer, got '1883'"),
    (SinkSpec("mqtt", {"port": True}), r"option 'port' must be an integer, got True"),
    (SinkSpec("mqtt", {"qos": 0}), r"qos must be 1 or 2"),
    (SinkSpec("mqtt", {"topic": "line/{station}/{shift}"}), r"uses \['shift'\]; expected only \{recipe\}, \{station\}"),
    (SinkSpec("mqtt", {"topic": "line/#"}), r"without the wildcards"),
    (SinkSpec("mqtt", {"retain": "yes"}), r"option 'retain' must be true or false"),
    (SinkSpec("mqtt", {"username": 3}), r"option 'username' must be a string or null, got 3"),
    (SinkSpec("modbus", {"registers": {"reject_col": 3}}), r"unknown name 'reject_col' \(did you mean 'reject_coil'\?\)"),
    (SinkSpec("modbus", {"registers": {"score_register": 0}}), r"score_register and result_register share holding registers address 0"),
    (SinkSpec("modbus", {"registers": {"trigger_coil": 0}}), r"trigger_coil and reject_coil share coils address 0"),
    (SinkSpec("modbus", {"registers": {"heartbeat_register": 70000}}), r"heartbeat_register must be an address 0..65535"),
    (SinkSpec("modbus", {"registers": [1, 2]}), r"registers must be a mapping"),
    (SinkSpec("modbus", {"unit": 300}), r"unit must be 0..255"),
    (SinkSpec("modbus", {"heartbeat_s": -1.0}), r"heartbeat_s must be >= 0"),
    (SinkSpec("jsonl", ["path"]), r"options must be a mapping"),  # type: ignore[arg-type]
])
def test_open_sink_errors_are_one_line_and_name_the_option(spec: SinkSpec, pattern: str) -> None:
    with pytest.raises(SinkConfigError, match=pattern) as err:
        open_sink(spec)
    assert isinstance(err.value, LineguardError) and "\n" not in str(err.value)


def test_open_sink_names_and_defaults() -> None:
    hook = open_sink(SinkSpec("webhook", {"url": "https://erp.example/in", "token": "t"}))
    assert isinstance(hook, WebhookSink) and hook.name == "webhook" and hook.timeout_s == 2.0
    named = open_sink(SinkSpec("webhook", {"url": "https://erp.example/in", "name": "erp", "timeout_s": 3}))
    assert named.name == "erp"


@pytest.mark.parametrize(("text", "kind", "options"), [
    ("-", "jsonl", {"path": "-"}),
    ("jsonl:/var/lg/d.jsonl", "jsonl", {"path": "/var/lg/d.jsonl"}),
    ("out/decisions.jsonl", "jsonl", {"path": "out/decisions.jsonl"}),
    ("https://erp.example/hook?x=1", "webhook", {"url": "https://erp.example/hook?x=1"}),
    ("mqtt://broker", "mqtt", {"host": "broker", "port": 1883}),
    ("mqtts://u:p%40ss@broker:9000", "mqtt", {"host": "broker", "port": 9000, "tls": True, "username": "u",
                                              "password": "p@ss"}),
    ("modbus://10.0.0.5", "modbus", {"host": "10.0.0.5", "port": 502}),
    ("modbus://plc:5020", "modbus", {"host": "plc", "port": 5020}),
])
def test_parse_sink_shorthand(text: str, kind: str, options: dict[str, object]) -> None:
    assert parse_sink(text) == SinkSpec(kind, options)


@pytest.mark.parametrize(("text", "pattern"), [
    ("kafka://x", r"--sink 'kafka://x' is not understood; expected '-', jsonl:PATH"),
    ("mqtt://", r"no host"),
    ("modbus://plc:99999", r"port is not a number"),
])
def test_parse_sink_errors(text: str, pattern: str) -> None:
    with pytest.raises(SinkConfigError, match=pattern):
        parse_sink(text)


def test_modbus_map_defaults_are_distinct_and_documented() -> None:
    m = ModbusMap()
    assert (m.reject_coil, m.trigger_coil) == (0, 1)
    assert (m.result_register, m.score_register, m.frame_counter_register, m.heartbeat_register,
            m.recipe_register) == (0, 1, 2, 3, 10)
    assert ModbusMap.from_options({"recipe_register": 100}).recipe_register == 100


def test_register_writes_are_grouped_into_consecutive_runs_in_order() -> None:
    assert _consecutive_runs([(0, 2), (1, 873), (2, 5)]) == [(0, [2, 873, 5])]
    assert _consecutive_runs([(20, 1), (21, 50), (30, 7)]) == [(20, [1, 50]), (30, [7])]
    assert _consecutive_runs([(5, 1), (4, 2), (6, 3)]) == [(5, [1]), (4, [2]), (6, [3])]  # counter stays last


@pytest.mark.parametrize(("raw", "name"), [
    (b"vanilla", "vanilla"), (b"  mint chips \n", "mint chips"), (b'{"recipe": "mint"}', "mint"),
    (b'"choc"', "choc"), (b"", None), (b'{"recipe": 3}', None), (b"{bad", None), (b"\xff\xfe", None),
    (b'{"name": "x"}', None), (b"[1]", "[1]"),
])
def test_recipe_payloads(raw: bytes, name: str | None) -> None:
    assert _recipe_from_payload(raw) == name


def test_mqtt_control_needs_a_station_and_clean_templates() -> None:
    with pytest.raises(SinkConfigError, match="station must be a non-empty name"):
        MqttControl(station="", on_recipe=print, on_trigger=print)
    with pytest.raises(SinkConfigError, match=r"recipe_topic .* uses \['recipe'\]"):
        MqttControl(station="s", on_recipe=print, on_trigger=print, recipe_topic="x/{station}/{recipe}")


def test_mqtt_sink_topic_for_payloads() -> None:
    sink = MqttSink("127.0.0.1", 1, client_id="unit-topic", timeout_s=0.1)  # nothing listens on port 1
    try:
        assert sink.topic_for({"station": "st1", "recipe": "mint"}) == "lineguard/st1/mint/decision"
        assert sink.topic_for({"station": "st1", "recipe": None}) == "lineguard/st1/default/decision"
        assert sink.topic_for({"station": "a/b", "recipe": "x#+"}) == "lineguard/a_b/x__/decision"
        assert sink.topic_for({"station": "st1", "kind": "alert"}) == "lineguard/st1/alert"
        with pytest.raises(SinkError, match=r"mqtt 127.0.0.1:1: not connected after 0.1 s"):
            sink.send(message(1))
    finally:
        sink.close()


def test_importing_the_sinks_loads_no_line_library() -> None:
    """paho-mqtt and pymodbus are imported by the classes that use them, never by importing the module."""
    import subprocess
    import sys

    code = ("import sys, lineguard.edge.sinks as s; s.SinkSpec('mqtt'); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'paho', 'pymodbus', 'pydantic', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
