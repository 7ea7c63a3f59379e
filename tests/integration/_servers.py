"""Real servers the line tests start and stop themselves: mosquitto and pymodbus's own TCP server.

Both run on a free 127.0.0.1 port and can be stopped and started again on the *same*
port, which is how the tests make an outage: the client under test sees the broker or
the PLC go away and come back, exactly as on a line.
"""

from __future__ import annotations

import asyncio
import getpass
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, *, timeout_s: float = 15.0, alive: Callable[[], bool] | None = None) -> None:
    """Block until 127.0.0.1:port accepts a TCP connection (``alive()`` turning False aborts early)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the server for port {port} exited before it listened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:g} s")


def wait_for(condition: Callable[[], bool], timeout_s: float = 15.0, interval_s: float = 0.02) -> bool:
    """Poll ``condition`` until it holds or the (generous) timeout passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()


class Mosquitto:
    """A mosquitto process on 127.0.0.1:``port`` with persistence in ``workdir``; stop/start keep the port."""

    def __init__(self, binary: str, workdir: Path, port: int) -> None:
        self.binary, self.workdir, self.port = binary, workdir, port
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir / 'data'}/\n"
            # started as root, mosquitto would switch to the 'mosquitto' user and could not write here
            f"user {getpass.getuser()}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"log_dest file {self.log}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        assert not self.running, "the broker is already running"
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(self.port, alive=lambda: self.running)
        except RuntimeError as exc:
            self.stop()
            log = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
            raise RuntimeError(f"mosquitto did not start: {exc}\n{log}") from None

    def stop(self) -> None:
        """SIGTERM (the broker saves its persistent sessions to disk), SIGKILL after 10 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


class ModbusServer:
    """pymodbus's own asyncio ``ModbusTcpServer`` in a thread: 200 coils and 200 holding registers at 0.

    It stands in for the PLC. The tests read and write its memory through a second
    pymodbus client (the PLC program's view), never through pymodbus internals.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._context: Any = None

    def _make_context(self) -> Any:
        from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext

        # block address 1 is protocol address 0 in pymodbus's (legacy) datastore
        device = ModbusDeviceContext(co=ModbusSequentialDataBlock(1, [False] * 200),
                                     hr=ModbusSequentialDataBlock(1, [0] * 200))
        return ModbusServerContext(device, single=True)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Serve on the port (the memory survives a stop/start, like a PLC's) and wait until it listens."""
        from pymodbus.server import ModbusTcpServer

        assert not self.running, "the server is already running"
        if self._context is None:
            self._context = self._make_context()
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def main() -> None:
                self._server = ModbusTcpServer(self._context, address=("127.0.0.1", self.port))
                ready.set()
                await self._server.serve_forever()

            try:
                loop.run_until_complete(main())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=serve, name=f"modbus-server-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise RuntimeError(f"the modbus server did not start: {failure[0]}")
        wait_listening(self.port, alive=lambda: self.running)

    def stop(self) -> None:
        """Shut the server down and close its connections; the port is free again after this."""
        if self._thread is None or self._loop is None or self._server is None:
            return
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop)
            future.result(timeout=10)
            self._thread.join(timeout=10)
        self._thread = None
        self._server = None
