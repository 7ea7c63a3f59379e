"""``lineguard edge run`` on a synthetic conveyor video, as a user runs it: a real process, the real store,
a JSON-lines sink through the outbox, SIGTERM, a folder across restarts, and one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from lineguard import synth
from tests.unit._cameras import wait_for
from tests.unit._edge_bundles import grey, make_toy_bundle

pytest.importorskip("cv2")
REPO = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "mlflow", "sklearn", "pandas", "optuna", "onnx", "onnxscript", "lineguard.train", "lineguard.export",
           "lineguard.tracking", "lineguard.models")

# The CLI exactly as installed (lineguard.cli:main), with the training stack made unimportable.
LAUNCH = r"""
import importlib.abc, sys
BLOCKED = {blocked!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{{name}} is blocked: `lineguard edge run` must not need it")
        return None
sys.meta_path.insert(0, Blocker())
sys.argv = ["lineguard", *sys.argv[1:]]
from lineguard.cli import main
main()
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _lineguard(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", LAUNCH.format(blocked=BLOCKED), *args], capture_output=True,
                          text=True, timeout=timeout, env=_env(), check=False)


def _summary(stderr: str) -> dict[str, object]:
    line = next(x for x in reversed(stderr.strip().splitlines()) if x.startswith("{"))
    return json.loads(line)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_bundle(tmp_path_factory.mktemp("bundle") / "toy")


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = synth.write_video(str(tmp_path_factory.mktemp("video") / "line.avi"), cones=4)
    return Path(path)


def test_edge_run_decides_a_video_into_the_store_and_a_jsonl_sink(bundle: Path, video: Path, tmp_path: Path) -> None:
    from lineguard.edge.store import Store

    db, out = tmp_path / "store.db", tmp_path / "decisions.jsonl"
    proc = _lineguard("edge", "run", "--bundle", str(bundle), "--source", str(video), "--store", str(db),
                      "--sink", f"jsonl:{out}", "--station", "cell-1", "--recipe", "vanilla")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = _summary(proc.stderr)
    assert summary["ended"] == "end_of_source" and summary["frames"] == summary["recorded"] == 40
    store = Store(db)
    try:
        rows = store.predictions(limit=1000)
        assert len(rows) == 40 and {r["station"] for r in rows} == {"cell-1"} and {r["recipe"] for r in rows} == {
            "vanilla"}
        backlog = store.outbox_backlog("jsonl")
    finally:
        store.close()
    lines = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    assert len(lines) + backlog == 40  # delivered now, or still in the outbox for the next start: none lost
    frames = [int(x["source"].rsplit("#", 1)[1]) for x in lines]
    assert frames == sorted(frames)  # in order per sink
    assert all(x["key"] == f"cell-1:{x['frame_id']}" for x in lines)


def test_edge_run_station_yaml_and_max_frames(bundle: Path, video: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "station.yaml"
    cfg.write_text(f"station: cell-2\nbundle: {bundle}\nsource:\n  input: {video}\n  loop: true\n"
                   f"store:\n  path: {tmp_path / 's.db'}\nmax_frames: 55\n")
    proc = _lineguard("edge", "run", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = _summary(proc.stderr)
    assert summary["ended"] == "max_frames" and summary["recorded"] == 55 and summary["station"] == "cell-2"


def test_edge_run_sigterm_drains_and_exits_cleanly(bundle: Path, video: Path, tmp_path: Path) -> None:
    """R10 through the CLI: stop taking frames, record those taken, flush the store, exit 0 within 10 s."""
    from lineguard.edge.store import Store

    db = tmp_path / "store.db"
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH.format(blocked=BLOCKED), "edge", "run", "--bundle",
                             str(bundle), "--source", str(video), "--loop", "--realtime", "--store", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        def decided() -> int:
            if not db.exists():
                return 0
            s = Store(db)
            try:
                return len(s.predictions(limit=10_000))
            finally:
                s.close()

        assert wait_for(lambda: decided() >= 30, 60, 0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    summary = _summary(stderr)
    assert summary["ended"] == "stopped" and summary["frames"] == summary["recorded"] == decided()


def test_edge_run_folder_decides_each_file_once_across_runs(bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(grey(60 * i, (24, 24))).save(folder / f"{i}.png")
        os.utime(folder / f"{i}.png", (time.time() - 60, time.time() - 60))
    args = ("edge", "run", "--bundle", str(bundle), "--source", str(folder), "--store", str(tmp_path / "s.db"))
    first = _lineguard(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert _summary(first.stderr)["recorded"] == 3
    Image.fromarray(grey(250, (24, 24))).save(folder / "new.png")
    os.utime(folder / "new.png", (time.time() - 60, time.time() - 60))
    second = _lineguard(*args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert _summary(second.stderr)["recorded"] == 1
    assert list(tmp_path.glob("*.seen-*.jsonl"))  # the ledger sits beside the store


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--source", "nope.avi"), "source 'nope.avi' not found; expected a video file"),
        (("--source", "push", "--mode", "sometimes"), "'mode' input should be 'free' or 'triggered'"),
        (("--source", "0", "--station", "a/b"), "'station' must be a plain name"),
        (("--source", "x.avi", "--sink", "ftp://x"), "is not understood"),
    ],
)
def test_edge_run_bad_input_is_one_line(bundle: Path, tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    proc = _lineguard("edge", "run", "--bundle", str(bundle), "--store", str(tmp_path / "s.db"), *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_edge_run_unknown_station_yaml_key_is_named_with_a_suggestion(bundle: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "station.yaml"
    cfg.write_text("station: cell-1\nsource:\n  input: push\n  capacty: 4\n")
    proc = _lineguard("edge", "run", "--bundle", str(bundle), "--config", str(cfg))
    assert proc.returncode == 2 and "unknown key 'source.capacty'; did you mean 'capacity'?" in proc.stderr


def test_store_recorder_keeps_order_images_and_the_signalled_sink_as_sent(tmp_path: Path) -> None:
    """The loop's adapter over the real store: batches in order, PNG only when sampled, a signalled sink sent."""
    import sqlite3

    import numpy as np

    from lineguard.edge.station import StoreRecorder, encode_png
    from lineguard.edge.store import PredictionRecord, SamplePolicy, Store
    from lineguard.preprocess import decode_image

    store = Store(tmp_path / "s.db", sample=SamplePolicy(rejects=True, low_confidence_band=0.0, pass_share=0.0))
    recorder = StoreRecorder(store, ["mqtt", "modbus"])
    frame = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)

    def rec(i: int, decision: str) -> PredictionRecord:
        score = 0.9 if decision == "reject" else 0.1
        return PredictionRecord(f"run-{i}", 1.0 + i, "cell-1", f"video:x#{i}", "vanilla", "bad" if score > 0.5 else
                                "good", score, decision, 0.5, "toy", "1", 1.0, {"brightness": 1.0})

    try:
        recorder.record_batch([(rec(0, "accept"), frame, ()), (rec(1, "reject"), frame, ("modbus",)),
                               (rec(2, "accept"), frame, ())])
        recorder.record(rec(3, "accept"), frame)
        rows = store.predictions(limit=10)
        assert sorted(r["frame_id"] for r in rows) == ["run-0", "run-1", "run-2", "run-3"]
        reject_id = next(r["id"] for r in rows if r["decision"] == "reject")
        png = store.image(reject_id)
        assert png is not None and np.array_equal(decode_image(png), frame)  # lossless, only the reject sampled
        assert sum(store.image(r["id"]) is not None for r in rows) == 1
        assert [m.key for m in store.outbox_pending("mqtt")] == [f"cell-1:run-{i}" for i in range(4)]
        assert [m.key for m in store.outbox_pending("modbus")] == ["cell-1:run-0", "cell-1:run-2", "cell-1:run-3"]
    finally:
        store.close()
    con = sqlite3.connect(tmp_path / "s.db")
    sent = con.execute("SELECT key FROM outbox WHERE sink='modbus' AND status='sent'").fetchall()
    con.close()
    assert sent == [("cell-1:run-1",)]  # the reject coil went out at once: recorded as sent, never queued again
    assert np.array_equal(decode_image(encode_png(frame)), frame)
