"""Run the station API with uvicorn: the token, the listening socket, and a shutdown that loses nothing.

:func:`serve` binds ``host:port`` (127.0.0.1 unless told otherwise; port 0 picks a free one
and the line printed at start says which), then runs :func:`lineguard.edge.api.create_app`
under uvicorn until SIGTERM or SIGINT. The shutdown, in order (R10):

1. intake closes: a new ``POST /v1/predict`` gets 503 and ``/v1/ready`` 503, while the
   socket stays open so clients are told rather than refused;
2. the uploads already in flight finish (at most ``drain_timeout_s``);
3. uvicorn closes the connections (at most 2 s more);
4. the station closes: the runtime drains its queue, the outbox workers stop, the store
   is flushed and closed;
5. the process exits 0. A watchdog ends it (exit 70) if all this takes longer than
   ``exit_deadline_s`` (9.5 s by default), so it is always gone within 10 s. A second
   signal skips the waits.

:func:`resolve_token` finds the API token: ``--token-file`` (read, or created), the config's
``api.token``/``api.token_file``, ``$LINEGUARD_API_TOKEN``, else a new random token written to
a file only the owner can read (0600), whose path is printed.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from lineguard import LineguardError
from lineguard.edge.api import ApiLimits, Intake, StationLike, create_app
from lineguard.edge.bundle import BundleLimits
from lineguard.edge.hotswap import ModelSlot
from lineguard.edge.signing import Trust

if TYPE_CHECKING:
    from lineguard.edge.station import Station, StationConfig

__all__ = ["LOOPBACK_HOSTS", "TOKEN_ENV", "ServedStation", "open_served", "resolve_token", "run_api", "serve"]

TOKEN_ENV = "LINEGUARD_API_TOKEN"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_TOKEN_FILE_BYTES = 4096
EXIT_DEADLINE_CODE = 70


def _read_token_file(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise LineguardError(f"cannot read the API token file {path}: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise LineguardError(f"API token file {path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_TOKEN_FILE_BYTES + 1)
    if len(raw) > MAX_TOKEN_FILE_BYTES:
        raise LineguardError(
            f"API token file {path} is over {MAX_TOKEN_FILE_BYTES} bytes; it should hold one token"
        )
    token = raw.decode("utf-8", "replace").strip()
    if len(token) < 16 or any(c.isspace() for c in token):
        raise LineguardError(
            f"API token file {path} must hold one token of at least 16 characters without spaces"
        )
    if st.st_mode & 0o077:
        print(
            f"warning: API token file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
            "chmod 600 it",
            file=sys.stderr,
        )
    return token


def _write_token_file(path: Path) -> str:
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise LineguardError(f"cannot create the API token file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def resolve_token(
    *,
    token_file: str | Path | None = None,
    token: str | None = None,
    default_file: str | Path = "lineguard-api.token",
) -> tuple[str, str]:
    """The API token and a phrase saying where it came from (printed at start; the token never is).

    ``token_file`` wins: read when it exists, else a new token is written to it. Then an
    explicit ``token`` (config ``api.token``), then ``$LINEGUARD_API_TOKEN``, then
    ``default_file`` (read, or created with a new token, mode 0600).
    """
    if token_file is not None:
        p = Path(token_file)
        if p.exists():
            return _read_token_file(p), f"token from {p}"
        return _write_token_file(p), f"new token written to {p} (mode 600)"
    for value, where in ((token, "the config's api.token"), (os.environ.get(TOKEN_ENV), f"${TOKEN_ENV}")):
        if value:
            if len(value) < 16:
                raise LineguardError(f"the API token from {where} must be at least 16 characters")
            return value, f"token from {where}"
    p = Path(default_file)
    if p.exists():
        return _read_token_file(p), f"token from {p}"
    return _write_token_file(p), f"new token written to {p} (mode 600)"


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise LineguardError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise LineguardError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _make_server(
    config: Any,
    intake: Intake,
    drain_timeout_s: float,
    exit_deadline_s: float,
    say: Callable[[str], None],
    on_signal: Callable[[], None] | None = None,
) -> Any:
    """A uvicorn Server whose first signal drains (see the module docstring) instead of closing at once."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        drain_started: float | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.drain_started is not None:  # a second signal: stop waiting
                self.force_exit = True
                self.should_exit = True
                return
            self.drain_started = time.monotonic()
            intake.close()
            if on_signal is not None:
                on_signal()
            say(f"{signal.Signals(sig).name}: intake closed, draining {intake.inflight} upload(s) in flight")
            threading.Thread(
                target=_watchdog, args=(exit_deadline_s, say), name="lineguard-exit-watchdog", daemon=True
            ).start()

        async def on_tick(self, counter: int) -> bool:
            if await super().on_tick(counter):
                return True
            if self.drain_started is not None and (
                intake.inflight == 0 or time.monotonic() - self.drain_started > drain_timeout_s
            ):
                self.should_exit = True
                return True
            return False

    return DrainingServer(config)


def _watchdog(deadline_s: float, say: Callable[[str], None]) -> None:
    time.sleep(deadline_s)
    say(f"shutdown took longer than {deadline_s:g} s; exiting now (exit {EXIT_DEADLINE_CODE})")
    os._exit(EXIT_DEADLINE_CODE)


def run_api(
    station: StationLike,
    *,
    token: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    allow_hot_swap: bool = False,
    limits: ApiLimits | None = None,
    close: Callable[[], None] | None = None,
    background: Callable[[], object] | None = None,
    on_signal: Callable[[], None] | None = None,
    drain_timeout_s: float = 5.0,
    exit_deadline_s: float = 9.5,
    log_level: str = "warning",
    token_note: str = "",
    say: Callable[[str], None] | None = None,
) -> None:
    """Serve ``station`` until SIGTERM/SIGINT, then drain and close it (module docstring).

    ``close`` flushes and closes the station after the server stopped (the store, the
    outbox); ``background`` runs in a thread beside the server (the edge loop of
    ``--source``) and ``on_signal`` is called at the first signal, with intake (the loop's
    ``request_stop``: it must return at once). ``say`` prints one status line (stdout by
    default); the first says where the API listens.
    """
    import uvicorn

    def _say(line: str) -> None:
        print(f"lineguard serve: {line}", flush=True)

    say = say or _say
    limits = limits or ApiLimits()
    intake = Intake(limits.max_concurrent_predictions)
    loopback = host in LOOPBACK_HOSTS
    allowed = ["127.0.0.1", "localhost", "[::1]", "::1"] if loopback else None
    app = create_app(
        station,
        token=token,
        allow_hot_swap=allow_hot_swap,
        limits=limits,
        intake=intake,
        allowed_hosts=allowed,
    )
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=2,
        lifespan="off",
        server_header=False,
    )
    server = _make_server(config, intake, drain_timeout_s, exit_deadline_s, say, on_signal)
    shown = f"[{host}]" if ":" in host else host
    say(
        f"station {station.name} listening on http://{shown}:{bound}"
        + (f" ({token_note})" if token_note else "")
    )
    if not loopback:
        say(
            f"warning: bound to {host}, not loopback: anyone who reaches this port can read decisions "
            "(writes still need the token)"
        )
    loop_thread = None
    if background is not None:
        loop_thread = threading.Thread(target=background, name="lineguard-edge-loop", daemon=True)
        loop_thread.start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        t0 = time.monotonic()
        if close is not None:
            close()
        say(f"stopped: store flushed and closed in {time.monotonic() - t0:.2f} s")


@dataclass
class ServedStation:
    """What the API serves: an opened station's store and runtime, the slot its model lives in, and the
    slot of its challenger in shadow (None: the station cannot run one)."""

    name: str
    store: Any
    runtime: Any
    slot: ModelSlot
    shadow_slot: Any = None

    @property
    def monitor(self) -> Any:
        """The runtime's drift monitor (a thread-safe view), or None when the bundle has no monitoring reference."""
        return getattr(self.runtime, "monitor", None)

    @property
    def shadow(self) -> Any:
        """The challenger running in shadow (a :class:`~lineguard.edge.shadow.ShadowRunner`), or None."""
        return self.shadow_slot.runner if self.shadow_slot is not None else None


def open_served(
    config: StationConfig, *, trust: Trust | None = None, bundle_limits: BundleLimits | None = None
) -> tuple[ServedStation, Station]:
    """Open the station of ``config`` as ``lineguard serve`` runs it; returns (what the API serves, the station).

    The model is loaded into a :class:`~lineguard.edge.hotswap.ModelSlot` under ``trust`` and
    ``bundle_limits``, and the station decides with the slot's model: a hot swap (``POST /v1/model``,
    or promoting the challenger in shadow) switches the runtime, and its drift monitor, to the new
    bundle. Without ``source.input`` the station takes frames only over the API. Nothing runs yet:
    the caller starts ``station.start_background()`` (and the edge loop, with a source) and closes
    the station when done. Tests open a station here to drive it exactly as it is served.
    """
    from lineguard.edge.sources import PushSource
    from lineguard.edge.station import open_station

    if config.bundle is None:
        raise LineguardError("no bundle: pass --bundle or set 'bundle:' in station.yaml")
    slot = ModelSlot.open(config.bundle, trust=trust, limits=bundle_limits, threads=config.threads)
    station = open_station(
        config,
        slot.current(),
        source=None if config.source.input else PushSource(),
        trust=trust,
        bundle_limits=bundle_limits,
    )
    slot.add_listener(lambda old, new: station.runtime.set_predictor(new))
    return ServedStation(config.station, station.store, station.runtime, slot, station.shadow_slot), station


def serve(
    config: str | Path | None = None,
    *,
    bundle: str | Path | None = None,
    source: str | None = None,
    host: str | None = None,
    port: int | None = None,
    token_file: str | Path | None = None,
    allow_hot_swap: bool = False,
    trust: Trust | None = None,
    bundle_limits: BundleLimits | None = None,
    limits: ApiLimits | None = None,
) -> None:
    """``lineguard serve``: open the station of ``config`` (station.yaml) and serve its API until SIGTERM.

    ``bundle``, ``source``, ``host`` and ``port`` override the config (port 0: a free port,
    printed). Without a source the station takes frames only over the API (``POST
    /v1/predict``); with one, its edge loop runs in the same process. The model is loaded
    into a :class:`~lineguard.edge.hotswap.ModelSlot` under ``trust`` and ``bundle_limits``;
    a hot swap (``allow_hot_swap`` or ``api.hot_swap``) re-checks every new bundle the same way.
    """
    from lineguard.edge.station import load_station_config

    cfg = load_station_config(
        config, overrides={"bundle": str(bundle) if bundle else None, "source.input": source}
    )
    if cfg.bundle is None:
        raise LineguardError("no bundle: pass --bundle or set 'bundle:' in station.yaml")
    served, station = open_served(cfg, trust=trust, bundle_limits=bundle_limits)
    try:
        token, note = resolve_token(
            token_file=token_file or cfg.api.token_file,
            token=cfg.api.token,
            default_file=Path(cfg.store.path).expanduser().parent / f"{cfg.station}.api-token",
        )
    except BaseException:
        station.close()
        raise
    station.start_background()
    run_api(
        served,
        token=token,
        host=host or cfg.api.host,
        port=cfg.api.port if port is None else port,
        allow_hot_swap=allow_hot_swap or cfg.api.hot_swap,
        limits=limits,
        close=station.close,
        background=station.runtime.run if cfg.source.input else None,
        on_signal=station.runtime.request_stop,
        token_note=note,
    )
