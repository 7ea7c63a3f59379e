"""Cameras for the source and runtime tests: a fake one the test kills and revives, and a real MJPEG stream.

:class:`FakeCamera` plays ``cv2.VideoCapture`` through the sources' ``opener`` hook: it
delivers numbered frames while alive; when killed, reads fail (``mode="fail"``) or block
(``mode="hang"``, like a stream that stops sending) and opens fail until it is revived.

:class:`MjpegServer` is a real HTTP server on 127.0.0.1 that streams synthetic JPEG frames
as ``multipart/x-mixed-replace`` (what IP cameras serve); OpenCV's FFmpeg backend reads it.
Stopping it drops every connection; starting it again serves on the same port.
"""

from __future__ import annotations

import http.server
import socketserver
import threading
import time
from typing import Any

import numpy as np


def numbered(i: int, size: tuple[int, int] = (24, 32)) -> np.ndarray:
    """A BGR frame whose blue channel holds ``i % 256`` (so a test can tell frames apart)."""
    img = np.zeros((*size, 3), np.uint8)
    img[..., 0] = i % 256
    return img


class FakeCamera:
    """A camera that can die and come back; ``opener`` is what a source is given."""

    def __init__(self, fps: float = 200.0, mode: str = "fail") -> None:
        self.period = 1.0 / fps
        self.mode = mode
        self.alive = threading.Event()
        self.alive.set()
        self.opens = 0
        self.frames = 0
        self._lock = threading.Lock()

    def kill(self) -> None:
        self.alive.clear()

    def revive(self) -> None:
        self.alive.set()

    def opener(self) -> _FakeCapture:
        with self._lock:
            self.opens += 1
        return _FakeCapture(self)


class _FakeCapture:
    def __init__(self, cam: FakeCamera) -> None:
        self.cam = cam
        self.opened = cam.alive.is_set()
        self.released = False

    def isOpened(self) -> bool:
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        cam = self.cam
        if not self.opened or self.released:
            return False, None
        if not cam.alive.is_set():
            if cam.mode == "hang":
                cam.alive.wait(30.0)  # blocks like a stream that stopped sending
            return False, None
        time.sleep(cam.period)
        with cam._lock:
            cam.frames += 1
            n = cam.frames
        return True, numbered(n)

    def release(self) -> None:
        self.released = True


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        import cv2

        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        i = 0
        try:
            while not self.server.stopping:
                _, buf = cv2.imencode(".jpg", numbered(i * 9, (48, 64)))
                data = buf.tobytes()
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data)
                                 + data + b"\r\n")
                i += 1
                time.sleep(1 / 60)
        except (BrokenPipeError, ConnectionResetError):
            return


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    stopping = False


class MjpegServer:
    """An MJPEG-over-HTTP camera on 127.0.0.1: ``start()``, ``stop()`` (drops clients), ``start()`` again."""

    def __init__(self) -> None:
        self.port = 0
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> MjpegServer:
        self._server = _Server(("127.0.0.1", self.port), _Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stopping = True
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def wait_for(cond: Any, timeout_s: float = 10.0, step_s: float = 0.01) -> bool:
    """Poll ``cond()`` until it is true or ``timeout_s`` passes (a bound on a hang, not a speed check)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step_s)
    return bool(cond())
