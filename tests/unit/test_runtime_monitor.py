"""The runtime watches every frame: image signals in each record, the embedding from the same ONNX call,
a drift alarm leaving through the outbox as an alert, the monitor readable while the loop runs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lineguard.edge.sources import Frame, PushSource
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


class _FileLikeSource:
    """A source that never drops (as a video file or a folder): the loop takes its frames in batches."""

    kind = "folder"
    drops_frames = False

    def __init__(self, images: list[np.ndarray]) -> None:
        self.all = [Frame(im, f"f{i}", 1.8e9 + i, f"test#{i}") for i, im in enumerate(images)]
        self.acked: list[Frame] = []

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        yield from self.all

    def batches(self, stop: threading.Event, max_n: int) -> Iterator[list[Frame]]:
        for i in range(0, len(self.all), max_n):
            yield self.all[i:i + max_n]

    def ack(self, frames: Sequence[Frame]) -> None:
        self.acked.extend(frames)

    def close(self) -> None:
        pass

    @property
    def stats(self) -> dict[str, Any]:
        return {}


class _Recorder:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def record(self, rec: Any, image: Any, sent: Sequence[str] = ()) -> None:
        self.records.append(rec)


@pytest.mark.parametrize("broken", [None, 13])
def test_batched_signals_fill_every_record_in_order(bundle: Path, broken: int | None) -> None:
    """Frames decided in batches get their image signals from one call per batch: each record carries its own
    frame's signals, in order, and the monitor sees every decided frame -- also when a broken frame makes its
    batch be decided frame by frame (the batch's signals then come from each frame's image)."""
    from lineguard.edge import Predictor
    from lineguard.edge.runtime import EdgeRuntime, RuntimeSettings
    from lineguard.monitor import EDGE_BATCH, Monitor

    images = [cone_frame(i, synth_recipe(RECIPE)) for i in range(40)]
    if broken is not None:
        images[broken] = images[broken][..., 0].copy()  # a grey 2-D array: the predictor refuses it
    predictor = Predictor(bundle)
    monitor = Monitor.from_bundle(predictor.bundle, batch=EDGE_BATCH)
    source, recorder = _FileLikeSource(images), _Recorder()
    summary = EdgeRuntime(predictor, source, station=RuntimeSettings(station="cell-1", recipe=RECIPE, batch=8),
                          recorder=recorder, monitor=monitor).run()
    kept = [i for i in range(len(images)) if i != broken]
    assert summary.failed == (broken is not None) and summary.recorded == len(kept)
    assert [r.source for r in recorder.records] == [f"test#{i}" for i in kept]
    assert sorted(f.frame_id for f in source.acked) == sorted(f"f{i}" for i in range(len(images)))  # broken too
    assert monitor.frames == len(kept)
    alone = np.stack([monitor.signals.of_image(images[i]) for i in kept])  # each frame's own signals
    got = np.array([[r.stats[name] for name in IMAGE_SIGNALS] for r in recorder.records])
    np.testing.assert_allclose(got, alone, rtol=1e-6, atol=1e-9)
