"""The edge loop: the Predictor's decisions, the recipe recorded, triggers, drops, back-pressure, restarts,
a camera that dies and returns (R8) and a SIGTERM drain with every taken frame recorded (R10)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lineguard import LineguardError, synth
from lineguard.edge import Predictor, load_bundle
from lineguard.edge.runtime import EdgeRuntime, RuntimeSettings, frame_stats
from lineguard.edge.sources import CameraSource, FolderSource, PushSource, VideoFileSource
from lineguard.edge.store import PredictionRecord
from tests.unit._cameras import FakeCamera, wait_for
from tests.unit._edge_bundles import grey, make_toy_bundle

cv2 = pytest.importorskip("cv2")
REPO = Path(__file__).resolve().parents[2]


class ListRecorder:
    """A recorder that keeps what it is given (and can be slow, or fail, on demand)."""

    def __init__(self, delay_s: float = 0.0, fail_on: set[int] | None = None) -> None:
        self.records: list[PredictionRecord] = []
        self.images: list[np.ndarray | None] = []
        self.sent: list[tuple[str, ...]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on or set()
        self.flushed = 0
        self.lock = threading.Lock()

    def record(self, rec: PredictionRecord, image: np.ndarray | None, sent: Sequence[str] = ()) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        with self.lock:
            if len(self.records) + len(self.fail_on & {-1}) in self.fail_on:
                self.fail_on.discard(len(self.records))
                raise OSError("disk unplugged")
            self.records.append(rec)
            self.images.append(image)
            self.sent.append(tuple(sent))

    def flush(self) -> None:
        self.flushed += 1


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_bundle(tmp_path_factory.mktemp("bundle") / "toy")


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = synth.write_video(str(tmp_path_factory.mktemp("video") / "line.avi"), cones=4)
    return Path(path)


def _settings(**kw: object) -> RuntimeSettings:
    return RuntimeSettings(**{"station": "cell-1", **kw})  # type: ignore[arg-type]


def test_decisions_equal_the_predictors_on_the_same_frames(bundle: Path, video: Path) -> None:
    rec = ListRecorder()
    rt = EdgeRuntime(bundle, VideoFileSource(video), station=_settings(recipe="vanilla", batch=8), recorder=rec)
    summary = rt.run()
    cap = cv2.VideoCapture(str(video))
    frames = []
    while (got := cap.read())[0]:
        frames.append(cv2.cvtColor(got[1], cv2.COLOR_BGR2RGB))
    pred = Predictor(load_bundle(bundle))
    expected = [pred.predict(f, "vanilla") for f in frames]
    assert summary.ended == "end_of_source" and summary.frames == summary.decided == summary.recorded == 40
    assert [r.decision for r in rec.records] == [p.decision for p in expected]  # type: ignore[union-attr]
    assert np.allclose([r.score for r in rec.records], [p.score for p in expected], atol=1e-6)  # type: ignore[union-attr]
    r0 = rec.records[0]
    assert (r0.station, r0.recipe, r0.threshold, r0.bundle_name, r0.bundle_version) == ("cell-1", "vanilla", 0.3,
                                                                                         "toy", "1")
    assert r0.source == f"video:{video}#0" and r0.latency_ms > 0
    assert r0.stats == pytest.approx(frame_stats(frames[0]))
    assert len({r.frame_id for r in rec.records}) == 40 and rec.flushed == 1
    assert rec.images[0] is not None and np.array_equal(rec.images[0], frames[0])


def test_frame_stats_estimate_the_full_image_statistics(video: Path) -> None:
    """The cheap statistics (a strided ~1,024-pixel subsample) follow image_stats on camera-like frames."""
    from lineguard.preprocess import image_stats

    errors = []
    for frame in VideoFileSource(video).frames(threading.Event()):
        cheap, full = frame_stats(frame.image), image_stats(frame.image)
        errors.append([abs(cheap[k] - full[k]) for k in ("brightness", "contrast")])
    err = np.array(errors)
    assert err.mean(axis=0).max() < 1.0 and err.max() < 3.0  # grey levels, of 0..255
    flat = frame_stats(grey(77, (480, 640)))
    assert flat == {"brightness": pytest.approx(77, abs=0.01), "contrast": pytest.approx(0, abs=0.01)}


def test_recipe_switch_is_recorded_with_each_decision(bundle: Path) -> None:
    src = PushSource(capacity=100)
    rec = ListRecorder()
    rt = EdgeRuntime(bundle, src, station=_settings(recipe="vanilla"), recorder=rec)
    level = 150  # the same frame each time; only the recipe (and so the threshold) changes
    thread = threading.Thread(target=rt.run, daemon=True)
    thread.start()
    src.push(grey(level))
    assert wait_for(lambda: len(rec.records) == 1)
    rt.set_recipe("chocolate")
    src.push(grey(level))
    assert wait_for(lambda: len(rec.records) == 2)
    rt.set_recipe(None)
    src.push(grey(level))
    assert wait_for(lambda: len(rec.records) == 3)
    with pytest.raises(LineguardError, match="recipe 'mint' is not one of the bundle's recipes: vanilla, chocolate"):
        rt.set_recipe("mint")
    assert rt.recipe is None
    rt.stop()
    thread.join(5)
    assert [(r.recipe, r.threshold) for r in rec.records] == [("vanilla", 0.3), ("chocolate", 0.5), (None, 0.5)]
    assert rt.metrics["decisions"].keys() == {"vanilla", "chocolate", ""}


def test_triggered_mode_decides_only_on_triggers_files(bundle: Path, video: Path) -> None:
    rec = ListRecorder()
    rt = EdgeRuntime(bundle, VideoFileSource(video), station=_settings(mode="triggered"), recorder=rec)
    thread = threading.Thread(target=rt.run, daemon=True)
    thread.start()
    time.sleep(0.3)
    assert rec.records == []  # frames are ready, but nobody asked
    for _ in range(3):
        rt.trigger()
    assert wait_for(lambda: len(rec.records) == 3)
    time.sleep(0.2)
    assert len(rec.records) == 3
    rt.stop()
    thread.join(5)
    assert [r.source.rsplit("#", 1)[1] for r in rec.records] == ["0", "1", "2"]  # a file: the next frames, in order
    assert rt.summary.ended == "stopped" and rt.metrics["triggers"]["received"] == 3


def test_triggered_mode_takes_a_live_frame_captured_after_the_trigger(bundle: Path) -> None:
    src = PushSource(capacity=10)
    rec = ListRecorder()
    rt = EdgeRuntime(bundle, src, station=_settings(mode="triggered", trigger_wait_s=0.5), recorder=rec)
    thread = threading.Thread(target=rt.run, daemon=True)
    thread.start()
    src.push(grey(10))  # before any trigger: never decided
    time.sleep(0.2)
    assert rec.records == []
    rt.trigger()
    time.sleep(0.05)
    after = src.push(grey(20))
    assert wait_for(lambda: len(rec.records) == 1)
    assert rec.records[0].frame_id == after.frame_id
    rt.trigger()  # no frame comes: the trigger is missed (counted), not decided late on a stale part
    assert wait_for(lambda: rt.triggers_missed == 1)
    src.push(grey(30))
    time.sleep(0.2)
    assert len(rec.records) == 1
    rt.stop()
    thread.join(5)
    assert rt.metrics["triggers"]["skipped_frames"] >= 1


def test_live_source_drops_are_counted_when_the_loop_is_slower(bundle: Path) -> None:
    cam = FakeCamera(fps=400)
    rec = ListRecorder(delay_s=0.02)
    rt = EdgeRuntime(bundle, CameraSource(0, opener=cam.opener), station=_settings(max_frames=15), recorder=rec)
    summary = rt.run()
    assert summary.ended == "max_frames" and len(rec.records) == 15
    m = rt.metrics
    assert summary.dropped > 0 and m["dropped"] == summary.dropped
    src = m["source"]
    assert src["frames_read"] - 15 - src["frames_dropped"] in (0, 1)


def test_files_are_never_dropped_a_slow_recorder_slows_the_reading(bundle: Path, video: Path) -> None:
    rec = ListRecorder(delay_s=0.005)
    src = VideoFileSource(video, prefetch=4)
    summary = EdgeRuntime(bundle, src, station=_settings(), recorder=rec).run()
    assert summary.decided == summary.recorded == 40 and summary.dropped == 0
    assert [int(r.source.rsplit("#", 1)[1]) for r in rec.records] == list(range(40))


def test_folder_watch_decides_each_file_once_across_a_restart(bundle: Path, tmp_path: Path) -> None:
    folder, ledger = tmp_path / "in", tmp_path / "seen.jsonl"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(grey(40 * i, (20, 20))).save(folder / f"{i}.png")
    first = ListRecorder()
    src = FolderSource(folder, watch=True, settle_s=0.0, poll_s=0.05, ledger=ledger)
    rt = EdgeRuntime(bundle, src, station=_settings(), recorder=first)
    thread = threading.Thread(target=rt.run, daemon=True)
    thread.start()
    assert wait_for(lambda: len(first.records) == 4)
    rt.stop()
    thread.join(5)
    src.close()
    Image.fromarray(grey(200, (20, 20))).save(folder / "new.png")  # arrives while the station is down
    second = ListRecorder()
    src2 = FolderSource(folder, watch=True, settle_s=0.0, poll_s=0.05, ledger=ledger)
    rt2 = EdgeRuntime(bundle, src2, station=_settings(), recorder=second)
    thread = threading.Thread(target=rt2.run, daemon=True)
    thread.start()
    assert wait_for(lambda: len(second.records) == 1)
    time.sleep(0.3)
    rt2.stop()
    thread.join(5)
    src2.close()
    assert [Path(r.source).name for r in second.records] == ["new.png"]
    assert sorted(Path(r.source).name for r in first.records) == ["0.png", "1.png", "2.png", "3.png"]


def test_a_frame_the_recorder_could_not_keep_is_decided_again_after_a_restart(bundle: Path, tmp_path: Path) -> None:
    folder, ledger = tmp_path / "in", tmp_path / "seen.jsonl"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(grey(40 * i, (20, 20))).save(folder / f"{i}.png")
        os.utime(folder / f"{i}.png", (time.time() - 100 + i, time.time() - 100 + i))
    rec = ListRecorder(fail_on={1})
    rt = EdgeRuntime(bundle, FolderSource(folder, ledger=ledger), station=_settings(), recorder=rec)
    summary = rt.run()
    assert summary.decided == 3 and summary.recorded == 2 and summary.record_errors == 1
    assert "disk unplugged" in (rt.metrics["last_error"] or "")
    again = ListRecorder()
    EdgeRuntime(bundle, FolderSource(folder, ledger=ledger), station=_settings(), recorder=again).run()
    assert [Path(r.source).name for r in again.records] == ["1.png"]


def test_reject_signal_goes_out_before_the_record(bundle: Path) -> None:
    src = PushSource()
    rec = ListRecorder()
    order: list[str] = []

    def plc(r: PredictionRecord) -> list[str]:
        order.append(f"signal {r.frame_id} recorded={len(rec.records)}")
        return ["modbus"]

    rt = EdgeRuntime(bundle, src, station=_settings(), recorder=rec, signal=plc)
    thread = threading.Thread(target=rt.run, daemon=True)
    thread.start()
    good, bad = src.push(grey(20)), src.push(grey(250))
    assert wait_for(lambda: len(rec.records) == 2)
    rt.stop()
    thread.join(5)
    assert order == [f"signal {bad.frame_id} recorded=1"]  # only the reject, before its record
    assert [(r.frame_id, r.decision, s) for r, s in zip(rec.records, rec.sent, strict=True)] == [
        (good.frame_id, "accept", ()), (bad.frame_id, "reject", ("modbus",))]


def test_a_failing_signal_does_not_stop_the_loop(bundle: Path) -> None:
    def broken(_: PredictionRecord) -> list[str]:
        raise LineguardError("PLC unreachable")

    src = PushSource()
    rec = ListRecorder()
    rt = EdgeRuntime(bundle, src, station=_settings(), recorder=rec, signal=broken)
    src.push(grey(250))
    src.push(grey(250))
    thread = threading.Thread(target=rt.run, daemon=True)
    thread.start()
    assert wait_for(lambda: len(rec.records) == 2)
    rt.stop()
    thread.join(5)
    assert rt.signal_errors == 2 and rec.sent == [(), ()]  # not sent now: the outbox still delivers them


def test_camera_that_dies_mid_run_is_detected_and_decisions_resume(bundle: Path) -> None:
    """R8 through the loop: the state shows in metrics, the process keeps running, frames resume."""
    cam = FakeCamera(fps=100)
    src = CameraSource(0, opener=cam.opener, frame_timeout_s=0.5, reconnect_min_s=0.05, reconnect_max_s=0.3)
    rec = ListRecorder()
    rt = EdgeRuntime(bundle, src, station=_settings(), recorder=rec)
    thread = threading.Thread(target=rt.run, daemon=True)
    thread.start()
    assert wait_for(lambda: len(rec.records) >= 5)
    cam.kill()
    assert wait_for(lambda: rt.metrics["source"]["state"] in ("disconnected", "reconnecting"))
    assert rt.metrics["source"]["connected"] is False
    n = len(rec.records)
    cam.revive()
    assert wait_for(lambda: rt.metrics["source"]["state"] == "connected" and len(rec.records) > n + 5)
    rt.stop()
    thread.join(5)
    assert rt.metrics["source"]["reconnects"] == 1 and thread.is_alive() is False


def test_submit_decides_now_and_records(bundle: Path) -> None:
    rec = ListRecorder()
    rt = EdgeRuntime(bundle, PushSource(), station=_settings(recipe="vanilla"), recorder=rec)
    r = rt.submit(grey(150), recipe="chocolate")
    assert r.source == "api" and r.recipe == "chocolate" and rec.records == [r]
    assert rt.submit(grey(150)).recipe == "vanilla"
    with pytest.raises(LineguardError, match="must be an HxWx3 uint8 RGB array, got"):
        rt.submit(np.zeros((4, 4), np.uint8))
    m = rt.metrics
    assert m["frames"] == 2 and m["decided"] == 2 and m["latency_ms"]["count"] == 2


def test_metrics_have_the_figures_of_metrics_endpoint(bundle: Path, video: Path) -> None:
    rt = EdgeRuntime(bundle, VideoFileSource(video), station=_settings(recipe="vanilla"), recorder=ListRecorder())
    rt.run()
    m = rt.metrics
    assert m["frames"] == m["decided"] == 40 and m["bundle"] == {"name": "toy", "version": "1"}
    assert sum(m["decisions"]["vanilla"].values()) == 40
    buckets = m["latency_ms"]["buckets"]
    assert buckets[-1] == (float("inf"), 40) and all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))
    assert m["source"]["kind"] == "video" and m["dropped"] == 0 and m["queue_depth"] == 0


SIGTERM_SCRIPT = r"""
import json, signal, sys, threading
from lineguard.edge.runtime import EdgeRuntime, RuntimeSettings
from lineguard.edge.sources import VideoFileSource

class JsonlRecorder:
    def __init__(self, path):
        self.f = open(path, "a")
    def record(self, rec, image, sent=()):
        self.f.write(json.dumps(rec.to_dict()) + "\n")
        self.f.flush()
    def flush(self):
        self.f.close()

bundle, video, out = sys.argv[1:4]
rt = EdgeRuntime(bundle, VideoFileSource(video, loop=True, realtime=True),
                 station=RuntimeSettings(station="cell-1"), recorder=JsonlRecorder(out))
signal.signal(signal.SIGTERM, lambda *_: rt.request_stop())
summary = rt.run()
print(json.dumps(summary.to_dict()))
"""


def test_sigterm_stops_intake_drains_and_records_every_taken_frame(bundle: Path, video: Path, tmp_path: Path) -> None:
    """R10, in a real process: SIGTERM -> no new frames, the ones taken are recorded, exit 0."""
    out = tmp_path / "records.jsonl"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SIGTERM_SCRIPT), str(bundle), str(video), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 20, 60)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=10)  # R10: within 10 s
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    lines = out.read_text().splitlines()
    assert summary["ended"] == "stopped" and summary["frames"] == summary["recorded"] == len(lines) >= 20
    assert len({json.loads(x)["key"] for x in lines}) == len(lines)


class BatchRecorder(ListRecorder):
    """A recorder with record_batch (as the store adapter has): batches arrive whole and in order."""

    def __init__(self, fail_batch: int | None = None) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.fail_batch = fail_batch

    def record_batch(self, items: Sequence[tuple[PredictionRecord, np.ndarray | None, Sequence[str]]]) -> None:
        if self.fail_batch is not None and len(self.batches) == self.fail_batch:
            self.batches.append(-len(items))
            raise OSError("database is locked")
        self.batches.append(len(items))
        for rec, image, sent in items:
            self.record(rec, image, sent)


def test_file_batches_go_to_record_batch_in_order(bundle: Path, video: Path) -> None:
    rec = BatchRecorder()
    summary = EdgeRuntime(bundle, VideoFileSource(video, prefetch=32), station=_settings(batch=8),
                          recorder=rec).run()
    assert summary.recorded == 40 and sum(rec.batches) == 40 and max(rec.batches) <= 8
    assert [int(r.source.rsplit("#", 1)[1]) for r in rec.records] == list(range(40))


def test_a_failed_batch_counts_every_decision_in_it(bundle: Path, video: Path) -> None:
    rec = BatchRecorder(fail_batch=1)
    rt = EdgeRuntime(bundle, VideoFileSource(video, prefetch=32), station=_settings(batch=8), recorder=rec)
    summary = rt.run()
    lost = -next(b for b in rec.batches if b < 0)
    assert summary.decided == 40 and summary.record_errors == lost and summary.recorded == 40 - lost
    assert "database is locked" in (rt.metrics["last_error"] or "")
