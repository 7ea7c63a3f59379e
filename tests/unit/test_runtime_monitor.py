"""The runtime watches every frame: image signals in each record, the embedding from the same ONNX call,
a drift alarm leaving through the outbox as an alert, the monitor readable while the loop runs."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from lineguard.edge.sources import PushSource
from lineguard.edge.station import load_station_config, open_station
from lineguard.edge.store import Store
from lineguard.monitor import IMAGE_SIGNALS
from tests.unit._dash_station import cone_frame, make_monitor_bundle, synth_recipe

RECIPE = "vanilla_sprinkles"
CLEAN, DRIFTED = 300, 200


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(make_monitor_bundle(tmp_path_factory.mktemp("mb") / "monitored", recipes=(RECIPE,)))


def _run(bundle: Path, tmp_path: Path, frames: list, monitor: bool = True) -> tuple[object, Path]:
    src = PushSource(capacity=len(frames) + 1)
    for image in frames:
        src.push(image)
    config = load_station_config(None, {
        "station": "cell-1", "recipe": RECIPE, "monitor": monitor, "store.path": str(tmp_path / "edge.db"),
        "sinks": [{"kind": "jsonl", "path": str(tmp_path / "out.jsonl")}],
    })
    station = open_station(config, bundle, source=src)
    thread = threading.Thread(target=station.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while station.runtime.recorded < len(frames) and time.monotonic() < deadline:
        time.sleep(0.05)
    status = station.monitor.status() if station.monitor is not None else None  # read while the station is open
    station.stop()
    thread.join(30)
    assert not thread.is_alive()
    return (station, status), tmp_path / "out.jsonl"


def test_a_dirty_lens_mid_stream_raises_an_alarm_that_leaves_as_an_alert(bundle: Path, tmp_path: Path) -> None:
    frames = [cone_frame(i, synth_recipe(RECIPE)) for i in range(CLEAN)]
    frames += [cone_frame(CLEAN + i, synth_recipe(RECIPE), drift="dirty-lens", severity=0.6) for i in range(DRIFTED)]
    (station, status), out = _run(bundle, tmp_path, frames)
    rt = station.runtime  # type: ignore[attr-defined]
    assert rt.recorded == CLEAN + DRIFTED
    assert status is not None and status["frames"] >= CLEAN
    assert rt.alarms_fired >= 1
    messages = [json.loads(line) for line in out.read_text().splitlines()]
    alerts = [m for m in messages if m.get("kind") == "alert"]
    assert alerts, "the alarm did not leave through the outbox"
    assert all(a["alarm"]["frame"] >= CLEAN for a in alerts), "an alarm fired on the clean frames"
    assert min(a["alarm"]["frame"] for a in alerts) < CLEAN + 150  # TARGETS Q4: within 150 frames
    assert len({a["key"] for a in alerts}) == len(alerts)
    assert len([m for m in messages if m.get("kind") != "alert"]) == CLEAN + DRIFTED
    with Store(tmp_path / "edge.db") as store:
        row = store.predictions(limit=1)[0]
        assert set(IMAGE_SIGNALS) <= set(row["stats"])  # every record carries the monitor's signals


def test_monitoring_can_be_turned_off(bundle: Path, tmp_path: Path) -> None:
    frames = [cone_frame(i, synth_recipe(RECIPE)) for i in range(20)]
    (station, status), _ = _run(bundle, tmp_path, frames, monitor=False)
    assert station.monitor is None and status is None  # type: ignore[attr-defined]
    with Store(tmp_path / "edge.db") as store:
        assert "sharpness" not in store.predictions(limit=1)[0]["stats"]
