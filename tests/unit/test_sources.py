"""Frame sources: files never drop (back-pressure), live sources keep the newest frame and count drops,
a folder decides each file once across restarts, a camera that dies is detected and reconnected (R8)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lineguard import synth
from lineguard.edge.sources import (
    CameraSource,
    FolderSource,
    PushSource,
    SourceError,
    UrlSource,
    VideoFileSource,
    open_source,
    source_kind,
)
from tests.unit._cameras import FakeCamera, MjpegServer, wait_for

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = synth.write_video(str(tmp_path_factory.mktemp("video") / "line.avi"), cones=3)
    return Path(path)


def _cv2_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    cap.release()
    return out


def _old_png(path: Path, level: int, age_s: float = 60.0) -> Path:
    Image.fromarray(np.full((16, 16, 3), level, np.uint8)).save(path, format="PNG")
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


# --- video files ------------------------------------------------------------------------------------


def test_video_source_gives_every_frame_in_order_as_rgb(video: Path) -> None:
    expected = _cv2_frames(video)
    src = VideoFileSource(video)
    got = list(src.frames(threading.Event()))
    assert len(got) == len(expected) == src.frame_count == 30
    assert all(np.array_equal(f.image, e) for f, e in zip(got, expected, strict=True))
    assert [f.source for f in got[:2]] == [f"video:{video}#0", f"video:{video}#1"]
    assert len({f.frame_id for f in got}) == len(got)
    assert src.stats["state"] == "ended" and src.stats["frames_dropped"] == 0


def test_video_source_waits_for_a_slow_loop_and_drops_nothing(video: Path) -> None:
    """Back-pressure: the reader stays at most ``prefetch`` frames ahead of the loop."""
    src = VideoFileSource(video, prefetch=3)
    taken, ahead = 0, []
    for frame in src.frames(threading.Event()):
        taken += 1
        time.sleep(0.005)
        ahead.append(src.frames_read - taken)
        assert frame.image.shape == (128, 128, 3)
    assert taken == 30 and src.frames_dropped == 0
    assert max(ahead) <= 3 + 1  # the queue plus the frame the reader holds while it waits


def test_video_source_batches_take_what_is_read_ahead(video: Path) -> None:
    src = VideoFileSource(video, prefetch=16)
    sizes = [len(b) for b in src.batches(threading.Event(), 8)]
    assert sum(sizes) == 30 and max(sizes) <= 8 and min(sizes) >= 1


def test_video_source_stops_when_asked(video: Path) -> None:
    stop = threading.Event()
    src = VideoFileSource(video, loop=True, prefetch=2)
    n = 0
    for _ in src.frames(stop):
        n += 1
        if n == 45:  # past the end of the first pass: looping works
            stop.set()
    assert n == 45 and src.passes >= 2 and src.stats["state"] == "stopped"


def test_open_source_names_the_kind_and_refuses_bad_input(tmp_path: Path, video: Path) -> None:
    assert source_kind(str(video)) == "video" and source_kind(str(tmp_path)) == "folder"
    assert source_kind("0") == "camera" and source_kind("rtsp://cam/1") == "url" and source_kind("push") == "push"
    with pytest.raises(SourceError, match="not found; expected a video file, an image folder"):
        open_source(str(tmp_path / "nope.mp4"))
    with pytest.raises(SourceError, match="is a single image"):
        open_source(str(_old_png(tmp_path / "one.png", 9)))
    (tmp_path / "text.avi").write_text("not a video")
    with pytest.raises(SourceError, match="not a video OpenCV can read"):
        open_source(str(tmp_path / "text.avi"))
    with pytest.raises(SourceError, match=r"watch do not apply to a video source; a video source takes: loop"):
        open_source(str(video), watch=True)
    assert isinstance(open_source(str(video), loop=None), VideoFileSource)  # None = the default


# --- image folders --------------------------------------------------------------------------------


def test_folder_source_reads_settled_images_oldest_first_and_skips_partial_files(tmp_path: Path) -> None:
    for i, name in enumerate(["b.png", "a.png", "c.jpg"]):
        _old_png(tmp_path / name, 10 * i, age_s=100 - i)
    _old_png(tmp_path / "d.png.tmp", 1)  # still being written by a tool that renames at the end
    _old_png(tmp_path / ".hidden.png", 1)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    os.utime(tmp_path / "broken.png", (time.time() - 50, time.time() - 50))
    src = FolderSource(tmp_path)
    got = list(src.frames(threading.Event()))
    assert [Path(f.source.removeprefix("file:")).name for f in got] == ["b.png", "a.png", "c.jpg"]
    assert got[0].image.shape == (16, 16, 3) and got[1].image[0, 0, 0] == 10
    assert src.files_unreadable == 1 and "broken.png" in (src.last_error or "")
    assert src.stats["state"] == "ended"


def test_folder_source_waits_until_a_file_has_settled(tmp_path: Path) -> None:
    _old_png(tmp_path / "old.png", 5)
    fresh = _old_png(tmp_path / "fresh.png", 7, age_s=0)  # just written: its writer may not be done
    stop = threading.Event()
    src = FolderSource(tmp_path, watch=True, settle_s=30.0, poll_s=0.05)
    frames = src.frames(stop)
    assert Path(next(frames).source).name == "old.png"
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(Path(f.source).name for f in frames), daemon=True)
    reader.start()
    time.sleep(0.4)
    assert seen == []  # not settled: not read
    t = time.time() - 60
    os.utime(fresh, (t, t))  # now it has been quiet for long enough
    assert wait_for(lambda: seen == ["fresh.png"])
    stop.set()
    reader.join(5)


def test_folder_source_decides_each_file_once_across_restarts(tmp_path: Path) -> None:
    images, state = tmp_path / "in", tmp_path / "state"
    images.mkdir()
    state.mkdir()
    ledger = state / "seen.jsonl"
    for i in range(5):
        _old_png(images / f"{i}.png", i, age_s=100 - i)
    first = FolderSource(images, ledger=ledger, prefetch=1)
    stop = threading.Event()
    taken = []
    for frame in first.frames(stop):
        taken.append(frame)
        if len(taken) <= 2:
            first.ack([frame])  # recorded
        if len(taken) == 3:
            stop.set()  # the third was taken but the process stops before it is recorded
    first.close()
    assert len(ledger.read_text().splitlines()) == 2
    with ledger.open("a") as f:
        f.write('"torn write with no newl')  # a crash in the middle of a ledger write
    second = FolderSource(images, ledger=ledger)
    again = list(second.frames(threading.Event()))
    names = [Path(f.source).name for f in again]
    assert names == ["2.png", "3.png", "4.png"]  # the unrecorded one comes back; the recorded two never do
    assert again[0].frame_id == taken[2].frame_id  # same file, same id: the store's idempotency key holds too
    second.ack(again)
    second.close()
    assert [json.loads(x).split("|")[0] for x in ledger.read_text().splitlines()] == [f"{i}.png" for i in range(5)]
    third = FolderSource(images, ledger=ledger)
    assert list(third.frames(threading.Event())) == []
    third.close()


def test_folder_watch_picks_up_new_files(tmp_path: Path) -> None:
    stop = threading.Event()
    src = FolderSource(tmp_path, watch=True, settle_s=0.0, poll_s=0.05)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(Path(f.source).name for f in src.frames(stop)), daemon=True)
    reader.start()
    for i in range(3):
        _old_png(tmp_path / f"new{i}.png", i)
        assert wait_for(lambda i=i: len(seen) == i + 1)
    stop.set()
    reader.join(5)
    assert seen == ["new0.png", "new1.png", "new2.png"]


# --- live sources -------------------------------------------------------------------------------------


def test_live_source_keeps_the_newest_frame_and_counts_every_drop() -> None:
    cam = FakeCamera(fps=500)
    src = CameraSource(0, opener=cam.opener)
    stop = threading.Event()
    taken = []
    for frame in src.frames(stop):
        taken.append(frame)
        time.sleep(0.02)  # a slow loop: the camera delivers ~10 frames meanwhile
        if len(taken) == 10:
            stop.set()
    s = src.stats
    assert s["frames_dropped"] > 0 and s["kind"] == "camera"
    # every frame read was either taken, dropped, or is the one still waiting in the slot
    assert s["frames_read"] - len(taken) - s["frames_dropped"] in (0, 1)
    seqs = [int(f.frame_id.split("-")[1]) for f in taken]
    assert seqs == sorted(seqs) and seqs[-1] - seqs[0] > len(seqs) - 1  # gaps show the drops
    assert int(taken[-1].image[0, 0, 2]) == cam_level(seqs[-1])  # BGR -> RGB: blue went to the last channel


def cam_level(n: int) -> int:
    return n % 256


def test_disconnect_is_detected_by_silence_even_when_the_read_hangs() -> None:
    """A stream that stops sending blocks in read(): the silence clock, not the read, notices it (R8)."""
    now = [1000.0]
    cam = FakeCamera(fps=100, mode="hang")
    src = CameraSource(0, opener=cam.opener, frame_timeout_s=1.0, reconnect_min_s=0.05, monotonic=lambda: now[0])
    stop = threading.Event()
    frames = src.frames(stop)
    next(frames)
    cam.kill()  # the next read blocks
    time.sleep(0.2)
    assert src.state == "connected"  # within the timeout nothing is declared
    now[0] += 0.9
    time.sleep(0.2)
    assert src.state == "connected"
    now[0] += 0.2  # 1.1 s of silence on the source's clock
    assert wait_for(lambda: src.state in ("disconnected", "reconnecting"))
    assert src.disconnects == 1 and "no frame for 1.1 s" in (src.last_error or "")
    cam.revive()
    assert wait_for(lambda: src.reconnects == 1 and src.state == "connected")
    stop.set()
    frames.close()


def test_camera_that_dies_is_reconnected_and_frames_resume() -> None:
    cam = FakeCamera(fps=200, mode="fail")
    src = CameraSource(0, opener=cam.opener, frame_timeout_s=0.5, reconnect_min_s=0.05, reconnect_max_s=0.2)
    stop = threading.Event()
    got: list[int] = []

    def loop() -> None:
        got.extend(int(f.frame_id.split("-")[1]) for f in src.frames(stop))

    reader = threading.Thread(target=loop, daemon=True)
    reader.start()
    assert wait_for(lambda: len(got) > 5)
    cam.kill()
    assert wait_for(lambda: src.state in ("disconnected", "reconnecting"))
    before = len(got)
    assert wait_for(lambda: src.open_failures >= 3)  # it keeps trying, with backoff, in this process
    assert len(got) - before <= 1
    cam.revive()
    assert wait_for(lambda: src.state == "connected" and len(got) > before + 5)
    stop.set()
    reader.join(5)
    s = src.stats
    assert s["disconnects"] == 1 and s["reconnects"] == 1 and s["last_detect_s"] is not None


@pytest.mark.slow
def test_real_mjpeg_stream_that_goes_away_and_returns_on_the_same_port() -> None:
    """OpenCV's FFmpeg reads a real HTTP MJPEG camera; the server stops and restarts, the source follows."""
    server = MjpegServer().start()
    src = UrlSource(server.url, frame_timeout_s=1.0, reconnect_min_s=0.1, reconnect_max_s=0.5,
                    open_timeout_s=1.0, read_timeout_s=1.0)
    stop = threading.Event()
    got: list[np.ndarray] = []
    reader = threading.Thread(target=lambda: got.extend(f.image for f in src.frames(stop)), daemon=True)
    reader.start()
    try:
        assert wait_for(lambda: len(got) >= 5, 20)
        assert got[0].shape == (48, 64, 3)
        server.stop()
        assert wait_for(lambda: src.disconnects == 1, 20)
        n = len(got)
        server.start()
        assert wait_for(lambda: src.reconnects == 1 and len(got) > n + 5, 30)
        assert src.state == "connected"
    finally:
        stop.set()
        reader.join(10)
        server.stop()


def test_push_source_is_a_bounded_queue_that_drops_the_oldest() -> None:
    src = PushSource(capacity=3)
    pushed = [src.push(np.full((8, 8, 3), i, np.uint8)) for i in range(5)]
    assert src.stats["frames_dropped"] == 2 and src.queue_depth == 3
    stop = threading.Event()
    batch = next(src.batches(stop, 8))
    assert [f.frame_id for f in batch] == [p.frame_id for p in pushed[2:]]
    with pytest.raises(SourceError, match="HxWx3 uint8 RGB"):
        src.push(np.zeros((8, 8), np.uint8))
