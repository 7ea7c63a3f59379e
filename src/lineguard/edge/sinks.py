"""Sinks: where decisions leave the station, and the line inputs that steer it.

Every sink implements the outbox's :class:`~lineguard.edge.outbox.Sink` protocol:
``send(message)`` returns once the receiver has the message, raises
:class:`~lineguard.edge.outbox.SinkError` for a failure worth retrying (broker down,
timeout, HTTP 5xx) and :class:`~lineguard.edge.outbox.SinkRejected` for a message the
receiver will never take (HTTP 4xx, a payload that is not JSON). ``send`` never blocks
much beyond its ``timeout_s``, so the outbox worker stays in charge of retries and order.
What goes out is the outbox payload (the prediction record's ``to_dict()``) with its
idempotency ``key`` added: delivery is at-least-once, so receivers dedupe by key.

- :class:`JsonLinesSink`: one JSON object per line, to a file or stdout.
- :class:`WebhookSink`: HTTP POST of the JSON body with an ``Idempotency-Key`` header
  (standard library only).
- :class:`MqttSink`: paho-mqtt, QoS 1, one topic per station and recipe, waits for the
  broker's PUBACK; reconnects forever with backoff.
- :class:`ModbusSink`: pymodbus client to a PLC, addresses in a :class:`ModbusMap`
  (reject coil, result, score x1000, frame counter, heartbeat);
  :meth:`ModbusSink.signal_now` is the reject signal written at once from the loop.
- Line inputs :class:`MqttControl` and :class:`ModbusControl`: the recipe and the
  trigger, set by an MQTT message or a PLC, handed to ``on_recipe(name)`` / ``on_trigger()``.
- :class:`SinkSpec` + :func:`open_sink` build a sink from a station config entry;
  :func:`parse_sink` reads the CLI's ``--sink`` shorthand (``mqtt://host:1883``, ...).

paho-mqtt and pymodbus (the ``line`` extra) are imported only by the classes that use them.
"""

from __future__ import annotations

import difflib
import http.client
import json
import logging
import math
import os
import socket
import string
import sys
import threading
import time
import types
import typing
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any, Protocol

from lineguard import LineguardError
from lineguard.edge.outbox import OutboxMessage, SinkError, SinkRejected

_log = logging.getLogger(__name__)

DEFAULT_TOPIC = "lineguard/{station}/{recipe}/decision"
DEFAULT_ALERT_TOPIC = "lineguard/{station}/alert"
DEFAULT_RECIPE_TOPIC = "lineguard/{station}/recipe/set"
DEFAULT_TRIGGER_TOPIC = "lineguard/{station}/trigger"
NO_RECIPE = "default"  # the topic segment for a decision made without a recipe

ACCEPT_VALUE, REJECT_VALUE = 1, 2  # the result register: 0 = nothing decided yet


class SinkConfigError(LineguardError):
    """A sink or line input was configured wrongly (unknown kind, bad option, unusable path)."""


def _json_body(message: OutboxMessage) -> bytes:
    """The bytes every network sink sends: the payload plus its idempotency key, as compact JSON."""
    try:
        text = json.dumps({**message.payload, "key": message.key}, separators=(",", ":"), sort_keys=True,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SinkRejected(f"message {message.key}: the payload is not JSON-safe ({exc})") from exc
    return text.encode("utf-8")


# --------------------------------------------------------------------------- JSON lines


class JsonLinesSink:
    """Append each message as one JSON line to a file, or to stdout for ``"-"``.

    A line is delivered once it is written and flushed. With ``fsync=True`` each line is
    also forced to disk, so a power cut cannot lose a line the outbox already counts as
    sent (slower: one disk sync per decision). When the file does not end with a newline
    (a line torn by a crash), a newline is added first so the next line stays parseable.
    """

    def __init__(self, path: str | os.PathLike[str] = "-", *, fsync: bool = False, name: str = "jsonl") -> None:
        self.name = name
        self.path = str(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._closed = False
        if self.path == "-":
            return
        target = Path(self.path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(target, "ab")  # noqa: SIM115 -- held open for the sink's lifetime
            if self._file.tell() > 0:
                with open(target, "rb") as probe:
                    probe.seek(-1, os.SEEK_END)
                    if probe.read(1) != b"\n":
                        self._file.write(b"\n")
                        self._file.flush()
        except OSError as exc:
            raise SinkConfigError(f"jsonl sink: cannot open {self.path!r} for appending ({exc.strerror or exc})") from exc

    def send(self, message: OutboxMessage) -> None:
        """Write the message as one line and flush it (and fsync, if asked)."""
        line = _json_body(message) + b"\n"
        with self._lock:
            if self._closed:
                raise SinkError(f"jsonl sink {self.path!r} is closed")
            try:
                if self._file is None:
                    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
                    if out is not None:
                        out.write(line)
                        out.flush()
                    else:  # a text-only stdout (e.g. captured by a test harness)
                        sys.stdout.write(line.decode("utf-8"))
                        sys.stdout.flush()
                    return
                self._file.write(line)
                self._file.flush()
                if self.fsync:
                    os.fsync(self._file.fileno())
            except (OSError, ValueError) as exc:  # ValueError: the file was closed
                raise SinkError(f"jsonl sink {self.path!r}: write failed ({exc})") from exc

    def close(self) -> None:
        """Close the file (stdout is left open)."""
        with self._lock:
            self._closed = True
            if self._file is not None:
                self._file.close()
                self._file = None


# --------------------------------------------------------------------------- webhook


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would turn the POST into a GET and drop the body."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


class WebhookSink:
    """POST each message as JSON to a URL, with an ``Idempotency-Key`` header (the record's key).

    Any 2xx status is delivered. 408 and 429 and every 5xx, a timeout or a connection
    error raise :class:`SinkError` (the outbox retries); any other 4xx, and a redirect
    (not followed: configure the final URL), raise :class:`SinkRejected`. ``timeout_s``
    bounds the connect and each read; the standard library only, and the usual
    ``HTTPS_PROXY`` / ``NO_PROXY`` variables are honoured.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 2.0, name: str = "webhook") -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SinkConfigError(f"webhook sink: url {url!r} is not an http:// or https:// URL with a host")
        if not timeout_s > 0:
            raise SinkConfigError(f"webhook sink: timeout_s must be > 0, got {timeout_s!r}")
        self.name = name
        self.url = url
        self.timeout_s = float(timeout_s)
        self._token = token
        self._opener = urllib.request.build_opener(_NoRedirect)

    def send(self, message: OutboxMessage) -> None:
        """POST the message; return on 2xx, raise SinkError / SinkRejected otherwise."""
        headers = {"Content-Type": "application/json", "Idempotency-Key": message.key,
                   "User-Agent": "lineguard-edge"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self.url, data=_json_body(message), headers=headers, method="POST")
        where = f"webhook {self._safe_url()}"
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                response.read(65536)
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
            detail = _short(exc.read(300) if exc.fp is not None else b"")
            exc.close()
            if status in (408, 429) or status >= 500:
                raise SinkError(f"{where}: HTTP {status} {detail}".rstrip()) from None
            if 300 <= status < 400:
                raise SinkRejected(f"{where}: HTTP {status} redirect not followed; configure the final URL") from None
            raise SinkRejected(f"{where}: HTTP {status} {detail}".rstrip()) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise SinkError(f"{where}: {type(reason).__name__}: {reason} (timeout {self.timeout_s:g} s)") from None
        except http.client.HTTPException as exc:  # a broken response (bad status line, incomplete read)
            raise SinkError(f"{where}: {type(exc).__name__}: {exc}") from None
        if not 200 <= status < 300:
            raise SinkError(f"{where}: unexpected HTTP {status}")

    def _safe_url(self) -> str:
        """The URL without credentials or query (which may carry secrets), for messages."""
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"

    def close(self) -> None:
        """Nothing to close: each send opens its own connection."""


def _short(raw: bytes) -> str:
    """The first line of a response body, for an error message."""
    text = raw.decode("utf-8", "replace").strip().splitlines()
    return text[0][:200] if text else ""


# --------------------------------------------------------------------------- MQTT


def _check_template(template: str, allowed: set[str], what: str) -> str:
    """Refuse a topic template with unknown ``{fields}`` or MQTT wildcards."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise SinkConfigError(f"{what} {template!r} is not a valid template ({exc})") from exc
    unknown = names - allowed
    if unknown:
        raise SinkConfigError(f"{what} {template!r} uses {sorted(unknown)}; expected only "
                              f"{', '.join('{' + a + '}' for a in sorted(allowed))}")
    if "+" in template or "#" in template or not template:
        raise SinkConfigError(f"{what} {template!r} must be a non-empty topic without the wildcards + and #")
    return template


def _segment(value: object) -> str:
    """One topic level from a station or recipe name: ``/``, ``+``, ``#`` become ``_``."""
    text = str(value) if value is not None and str(value) != "" else NO_RECIPE
    return text.replace("/", "_").replace("+", "_").replace("#", "_")


def _mqtt_client(*, client_id: str, host: str, port: int, keepalive_s: int, tls: bool, ca_file: str | None,
                 cert_file: str | None, key_file: str | None, username: str | None, password: str | None,
                 reconnect_min_s: float, reconnect_max_s: float) -> Any:
    """A paho 2.x client with a persistent session (clean_session False) and reconnect backoff."""
    try:
        import paho.mqtt.client as mqtt
    except ImportError as exc:
        raise SinkConfigError("mqtt needs paho-mqtt: pip install 'lineguard[line]'") from exc
    if not 0 < reconnect_min_s <= reconnect_max_s:
        raise SinkConfigError(f"mqtt: need 0 < reconnect_min_s <= reconnect_max_s, got {reconnect_min_s!r}, "
                              f"{reconnect_max_s!r}")
    if not 0 < int(port) < 65536:
        raise SinkConfigError(f"mqtt: port must be 1..65535, got {port!r}")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                         protocol=mqtt.MQTTv311)
    if username is not None:
        client.username_pw_set(username, password)
    if tls:
        try:
            client.tls_set(ca_certs=ca_file, certfile=cert_file, keyfile=key_file)
        except (OSError, ValueError) as exc:
            raise SinkConfigError(f"mqtt: cannot set up TLS ({exc})") from exc
    client.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)  # type: ignore[arg-type]
    return client


def _default_client_id(role: str) -> str:
    """A client id that stays the same across restarts on this host (the broker keeps the session by it)."""
    return f"lineguard-{socket.gethostname()}-{role}"


class _MqttLink:
    """The connection state shared by the MQTT sink and control: an event set while connected."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, int(port)
        self.connected = threading.Event()
        self.last_error: str | None = None
        self.connects = 0
        self.closing = False

    def on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            self.last_error = f"broker {self.host}:{self.port} refused the connection: {reason_code}"
            _log.warning("mqtt: %s", self.last_error)
            return
        self.connects += 1
        self.connected.set()

    def on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self.connected.is_set() and not self.closing:
            self.last_error = f"disconnected from broker {self.host}:{self.port} ({reason_code})"
            _log.warning("mqtt: %s; reconnecting", self.last_error)
        self.connected.clear()

    def on_connect_fail(self, client: Any, userdata: Any) -> None:
        self.last_error = f"cannot reach broker {self.host}:{self.port}"
        self.connected.clear()


class MqttSink:
    """Publish each message to an MQTT broker at QoS 1 and return once the broker acknowledged it.

    Topics: ``topic`` (default ``lineguard/{station}/{recipe}/decision``, a record without a
    recipe goes to ``.../default/...``) and, for payloads with ``"kind": "alert"``,
    ``alert_topic`` (``lineguard/{station}/alert``). The body is the JSON payload with its
    ``key``. ``send`` waits up to ``timeout_s`` for the connection and the PUBACK and
    raises :class:`SinkError` if either does not come, so the outbox keeps the message and
    retries; while the broker is away nothing is queued in memory, the outbox holds it.
    The client reconnects forever (``reconnect_min_s`` doubling up to ``reconnect_max_s``)
    with a fixed ``client_id`` and ``clean_session=False``. Set a distinct ``client_id``
    per station when several stations share a host.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, *, topic: str = DEFAULT_TOPIC,
                 alert_topic: str = DEFAULT_ALERT_TOPIC, qos: int = 1, client_id: str | None = None,
                 timeout_s: float = 2.0, keepalive_s: int = 30, retain: bool = False, tls: bool = False,
                 ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                 username: str | None = None, password: str | None = None, reconnect_min_s: float = 0.5,
                 reconnect_max_s: float = 30.0, name: str = "mqtt") -> None:
        if qos not in (1, 2):
            raise SinkConfigError(f"mqtt sink: qos must be 1 or 2 (an acknowledged delivery), got {qos!r}")
        if not timeout_s > 0:
            raise SinkConfigError(f"mqtt sink: timeout_s must be > 0, got {timeout_s!r}")
        self.name = name
        self.topic = _check_template(topic, {"station", "recipe"}, "mqtt sink: topic")
        self.alert_topic = _check_template(alert_topic, {"station", "recipe"}, "mqtt sink: alert_topic")
        self.qos, self.retain, self.timeout_s = qos, retain, float(timeout_s)
        self.client_id = client_id or _default_client_id(name)
        self._link = _MqttLink(host, port)
        self._client = _mqtt_client(client_id=self.client_id, host=host, port=port, keepalive_s=keepalive_s,
                                    tls=tls, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                                    username=username, password=password, reconnect_min_s=reconnect_min_s,
                                    reconnect_max_s=reconnect_max_s)
        self._client.on_connect = self._link.on_connect
        self._client.on_disconnect = self._link.on_disconnect
        self._client.on_connect_fail = self._link.on_connect_fail
        self.published = 0
        self._client.connect_async(host, int(port), keepalive=keepalive_s)
        self._client.loop_start()

    @property
    def connected(self) -> bool:
        """Whether the client holds a connection to the broker now."""
        return self._link.connected.is_set()

    @property
    def last_error(self) -> str | None:
        """The last connection problem, for health and logs."""
        return self._link.last_error

    def topic_for(self, payload: Mapping[str, Any]) -> str:
        """The topic a payload goes to (decision or alert), from its station and recipe."""
        template = self.alert_topic if payload.get("kind") == "alert" else self.topic
        return template.format(station=_segment(payload.get("station")), recipe=_segment(payload.get("recipe")))

    def send(self, message: OutboxMessage) -> None:
        """Publish and wait for the PUBACK; SinkError when not connected or not acknowledged in time."""
        import paho.mqtt.client as mqtt

        body = _json_body(message)
        topic = self.topic_for(message.payload)
        deadline = time.monotonic() + self.timeout_s
        where = f"mqtt {self._link.host}:{self._link.port}"
        if not self._link.connected.wait(self.timeout_s):
            raise SinkError(f"{where}: not connected after {self.timeout_s:g} s "
                            f"({self._link.last_error or 'connecting'})")
        info = self._client.publish(topic, body, qos=self.qos, retain=self.retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise SinkError(f"{where}: publish to {topic} failed ({mqtt.error_string(info.rc)})")
        try:
            info.wait_for_publish(max(deadline - time.monotonic(), 0.001))
        except (RuntimeError, ValueError) as exc:
            raise SinkError(f"{where}: publish to {topic} failed ({exc})") from None
        if not info.is_published():
            raise SinkError(f"{where}: no PUBACK for {message.key} on {topic} within {self.timeout_s:g} s")
        self.published += 1

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._link.closing = True
        self._client.disconnect()
        self._client.loop_stop()


class MqttControl:
    """The station's MQTT inputs: a recipe change and a trigger, handed to callbacks.

    Subscribes ``lineguard/{station}/recipe/set`` (QoS 1; the payload is the recipe name
    as text, or JSON ``{"recipe": "name"}``) and ``lineguard/{station}/trigger`` (any
    payload). With the persistent session a recipe set while the station was offline is
    delivered when it reconnects, and a *retained* recipe message sets the recipe at start;
    a retained recipe is applied only as the first recipe message the process sees (a
    resubscription after a broker restart replays it, and it must not undo a newer choice).
    A trigger only means "inspect the part that is there now": it is subscribed at
    QoS 0 so the broker does not queue stale triggers for an offline station, and retained
    triggers are ignored. Callbacks run on the MQTT network thread: keep them short; an
    exception in one is logged and counted, never fatal.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, *, station: str,
                 on_recipe: Callable[[str], object], on_trigger: Callable[[], object],
                 recipe_topic: str = DEFAULT_RECIPE_TOPIC, trigger_topic: str = DEFAULT_TRIGGER_TOPIC,
                 client_id: str | None = None, keepalive_s: int = 30, tls: bool = False,
                 ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                 username: str | None = None, password: str | None = None, reconnect_min_s: float = 0.5,
                 reconnect_max_s: float = 30.0) -> None:
        if not station:
            raise SinkConfigError("mqtt control: station must be a non-empty name")
        self.station = station
        self.recipe_topic = _check_template(recipe_topic, {"station"}, "mqtt control: recipe_topic").format(
            station=_segment(station))
        self.trigger_topic = _check_template(trigger_topic, {"station"}, "mqtt control: trigger_topic").format(
            station=_segment(station))
        self._on_recipe, self._on_trigger = on_recipe, on_trigger
        self._host, self._port, self._keepalive_s = host, int(port), keepalive_s
        self.client_id = client_id or _default_client_id(f"{_segment(station)}-control")
        self._link = _MqttLink(host, port)
        self._client = _mqtt_client(client_id=self.client_id, host=host, port=port, keepalive_s=keepalive_s,
                                    tls=tls, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                                    username=username, password=password, reconnect_min_s=reconnect_min_s,
                                    reconnect_max_s=reconnect_max_s)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._link.on_disconnect
        self._client.on_connect_fail = self._link.on_connect_fail
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._subscribed = threading.Event()
        self._recipe_seen = False
        self.stats: dict[str, Any] = {"recipes": 0, "triggers": 0, "ignored": 0, "errors": 0, "last_error": None}
        self._started = False

    def start(self) -> MqttControl:
        """Connect (in the background, retrying forever) and subscribe on every (re)connect."""
        if not self._started:
            self._client.connect_async(self._host, self._port, keepalive=self._keepalive_s)
            self._client.loop_start()
            self._started = True
        return self

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Wait until the subscriptions are in place (the broker's SUBACK); False on timeout."""
        return self._subscribed.wait(timeout_s)

    @property
    def connected(self) -> bool:
        """Whether the client holds a connection to the broker now."""
        return self._link.connected.is_set()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._link.on_connect(client, userdata, flags, reason_code, properties)
        if not self._link.connected.is_set():
            return
        self._subscribed.clear()
        client.subscribe([(self.recipe_topic, 1), (self.trigger_topic, 0)])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        refused = [str(code) for code in reason_codes if getattr(code, "is_failure", False)]
        if refused:
            self._link.last_error = f"broker refused the subscriptions ({', '.join(refused)})"
            _log.warning("mqtt control: %s", self._link.last_error)
            return
        self._subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            if msg.topic == self.trigger_topic:
                if msg.retain:
                    self.stats["ignored"] += 1
                    _log.info("mqtt control: ignored a retained trigger on %s", msg.topic)
                    return
                self.stats["triggers"] += 1
                self._on_trigger()
            elif msg.topic == self.recipe_topic:
                name = _recipe_from_payload(msg.payload)
                if name is None:
                    self.stats["ignored"] += 1
                    _log.warning("mqtt control: %s payload is not a recipe name or {\"recipe\": name}", msg.topic)
                    return
                if msg.retain and self._recipe_seen:
                    # replayed by a resubscription: older than the recipe this process already follows
                    self.stats["ignored"] += 1
                    return
                self._recipe_seen = True
                self.stats["recipes"] += 1
                self._on_recipe(name)
        except Exception as exc:  # a callback's error must not kill the network thread
            self.stats["errors"] += 1
            self.stats["last_error"] = f"{type(exc).__name__}: {exc}"
            _log.warning("mqtt control: %s failed: %s", msg.topic, exc)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        if self._started:
            self._link.closing = True
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False


def _recipe_from_payload(raw: bytes) -> str | None:
    """A recipe name from a message: plain text, or a JSON object with a ``recipe`` string."""
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if text.startswith("{"):
        try:
            value = json.loads(text).get("recipe")
        except (ValueError, AttributeError):
            return None
    elif text.startswith('"'):
        try:
            value = json.loads(text)
        except ValueError:
            return None
    else:
        value = text
    return (value.strip() or None) if isinstance(value, str) else None


# --------------------------------------------------------------------------- Modbus


@dataclass(frozen=True, slots=True)
class ModbusMap:
    """Where on the PLC each value lives: 0-based Modbus protocol addresses.

    Address 0 is what PLC manuals write as coil 00001 / holding register 40001. Written
    by :class:`ModbusSink`: ``reject_coil`` (1 = the last decided frame was a reject, 0 =
    accept), holding registers ``result_register`` (0 = nothing decided yet, 1 = accept,
    2 = reject), ``score_register`` (the reject score x 1000, 0..1000),
    ``frame_counter_register`` (decisions written since the sink started, modulo 65536;
    it changes after the others are written, so a PLC that waits for it reads a complete
    record) and ``heartbeat_register`` (incremented every ``heartbeat_s`` while the station
    runs; a PLC that sees it stop knows the station is down). Read by
    :class:`ModbusControl`: holding register ``recipe_register`` (0 = the PLC does not
    choose; n >= 1 = the n-th recipe of the bundle's recipe list, counted from 1) and
    coil ``trigger_coil`` (the PLC sets it to 1 to ask for an inspection; the station
    resets it to 0 and fires one trigger).
    """

    reject_coil: int = 0
    trigger_coil: int = 1
    result_register: int = 0
    score_register: int = 1
    frame_counter_register: int = 2
    heartbeat_register: int = 3
    recipe_register: int = 10

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
                raise SinkConfigError(f"modbus registers: {f.name} must be an address 0..65535, got {value!r}")
        holding = {"result_register": self.result_register, "score_register": self.score_register,
                   "frame_counter_register": self.frame_counter_register,
                   "heartbeat_register": self.heartbeat_register, "recipe_register": self.recipe_register}
        _refuse_overlap(holding, "holding registers")
        _refuse_overlap({"reject_coil": self.reject_coil, "trigger_coil": self.trigger_coil}, "coils")

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | ModbusMap) -> ModbusMap:
        """A map from a config mapping; unknown names are refused with a suggestion."""
        if isinstance(options, ModbusMap):
            return options
        if not isinstance(options, Mapping):
            raise SinkConfigError(f"modbus registers must be a mapping of name to address, got {options!r}")
        known = [f.name for f in fields(cls)]
        for key in options:
            if key not in known:
                raise SinkConfigError(f"modbus registers: unknown name {key!r}{_suggest(str(key), known)}; "
                                      f"expected one of: {', '.join(known)}")
        return cls(**dict(options))


def _refuse_overlap(addresses: Mapping[str, int], what: str) -> None:
    seen: dict[int, str] = {}
    for name, address in addresses.items():
        if address in seen:
            raise SinkConfigError(f"modbus registers: {name} and {seen[address]} share {what} address {address}")
        seen[address] = name


class _Decided(Protocol):
    """What :meth:`ModbusSink.signal_now` needs of a prediction record."""

    @property
    def decision(self) -> str: ...

    @property
    def score(self) -> float: ...


_PERMANENT_MODBUS_CODES = {1, 2, 3}  # illegal function / data address / data value: the map is wrong


class _ModbusLink:
    """A pymodbus TCP client guarded by a lock, turning its failures into SinkError."""

    def __init__(self, host: str, port: int, *, unit: int, timeout_s: float, what: str) -> None:
        try:
            from pymodbus.client import ModbusTcpClient
        except ImportError as exc:
            raise SinkConfigError(f"{what} needs pymodbus: pip install 'lineguard[line]'") from exc
        if not 0 < int(port) < 65536:
            raise SinkConfigError(f"{what}: port must be 1..65535, got {port!r}")
        if not 0 <= int(unit) <= 255:
            raise SinkConfigError(f"{what}: unit must be 0..255, got {unit!r}")
        if not timeout_s > 0:
            raise SinkConfigError(f"{what}: timeout_s must be > 0, got {timeout_s!r}")
        self.where = f"{what} {host}:{port}"
        self.unit = int(unit)
        self.lock = threading.Lock()
        self.client = ModbusTcpClient(host, port=int(port), timeout=float(timeout_s), retries=0)
        self.last_error: str | None = None

    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """Run one client request; SinkError on a connection problem, SinkRejected on an illegal-address reply."""
        from pymodbus.exceptions import ModbusException

        with self.lock:
            try:
                response = getattr(self.client, op)(*args, device_id=self.unit, **kwargs)
            except ModbusException as exc:
                self.client.close()  # resynchronise: the next call reconnects
                self.last_error = f"{self.where}: {op} failed ({_first_line(exc)})"
                raise SinkError(self.last_error) from None
            except OSError as exc:
                self.client.close()
                self.last_error = f"{self.where}: {op} failed ({exc})"
                raise SinkError(self.last_error) from None
        if response.isError():
            code = getattr(response, "exception_code", None)
            self.last_error = f"{self.where}: {op} at {args[0] if args else '?'} refused (Modbus exception {code})"
            if code in _PERMANENT_MODBUS_CODES:
                raise SinkRejected(self.last_error + "; check the register map")
            raise SinkError(self.last_error)
        self.last_error = None
        return response

    @property
    def connected(self) -> bool:
        return bool(self.client.connected)

    def close(self) -> None:
        with self.lock:
            self.client.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class ModbusSink:
    """Write each decision to a PLC over Modbus TCP, at the addresses of a :class:`ModbusMap`.

    Per decision: the reject coil first (it drives the actuator), then result, score x
    1000 and the frame counter, in one register write when they are consecutive. A
    heartbeat thread increments the heartbeat register every ``heartbeat_s`` (0 turns it
    off). :meth:`signal_now` is the same write, called by the inference loop for the reject
    signal within the frame's budget; the outbox then records this sink's row as sent.

    The PLC's registers hold *the current decision*, not a log, and a late reject coil
    could throw out the wrong part. So a decision is written only while it is fresh: one
    captured (its ``time``) more than ``max_age_s`` ago -- an outbox replay after a PLC
    outage -- is acknowledged without a write and counted in ``stale``, and one older than
    the decision already written is counted in ``superseded`` (the record itself is in the
    store either way; ``max_age_s=None`` writes every decision, late or not). Requests
    time out after ``timeout_s``; a connection problem is a :class:`SinkError` and the next
    request reconnects.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 502, *, unit: int = 1,
                 registers: ModbusMap | Mapping[str, int] | None = None, timeout_s: float = 1.0,
                 heartbeat_s: float = 1.0, max_age_s: float | None = 2.0, name: str = "modbus") -> None:
        if heartbeat_s < 0:
            raise SinkConfigError(f"modbus sink: heartbeat_s must be >= 0 (0 = off), got {heartbeat_s!r}")
        if max_age_s is not None and not max_age_s > 0:
            raise SinkConfigError(f"modbus sink: max_age_s must be > 0 or null (no limit), got {max_age_s!r}")
        self.name = name
        self.registers = ModbusMap.from_options(registers) if registers is not None else ModbusMap()
        self._link = _ModbusLink(host, port, unit=unit, timeout_s=timeout_s, what="modbus sink")
        self.max_age_s = None if max_age_s is None else float(max_age_s)
        self.frames = 0
        self.stale = 0
        self.superseded = 0
        self.heartbeats = 0
        self.heartbeat_s = float(heartbeat_s)
        self._written_time = -math.inf
        self._write_lock = threading.Lock()  # the loop's signal_now and the outbox worker's send
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        if self.heartbeat_s > 0:
            self._heartbeat = threading.Thread(target=self._beat, name=f"lineguard-{name}-heartbeat", daemon=True)
            self._heartbeat.start()

    @property
    def connected(self) -> bool:
        """Whether the client holds a connection to the PLC now."""
        return self._link.connected

    @property
    def last_error(self) -> str | None:
        """The last failed request, for health and logs (None after a success)."""
        return self._link.last_error

    def signal_now(self, record: _Decided) -> None:
        """Write this decision (reject coil first) to the PLC now; SinkError if the PLC is unreachable."""
        self._write(record.decision, record.score, getattr(record, "time", None), what="signal")

    def send(self, message: OutboxMessage) -> None:
        """Write the message's decision and score if still fresh; SinkRejected for a payload without them."""
        decision, score = message.payload.get("decision"), message.payload.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise SinkRejected(f"modbus sink: message {message.key} has no numeric score")
        when = message.payload.get("time")
        self._write(decision, float(score), when if isinstance(when, int | float) else None, what=message.key)

    def _write(self, decision: object, score: float, when: float | None, *, what: str) -> None:
        if decision not in ("accept", "reject"):
            raise SinkRejected(f"modbus sink: {what}: decision must be 'accept' or 'reject', got {decision!r}")
        if not math.isfinite(score):
            raise SinkRejected(f"modbus sink: {what}: score must be finite, got {score!r}")
        reg = self.registers
        with self._write_lock:
            if when is not None:
                if self.max_age_s is not None and time.time() - when > self.max_age_s:
                    self.stale += 1
                    return
                if when < self._written_time:
                    self.superseded += 1
                    return
            self._link.call("write_coil", reg.reject_coil, decision == "reject")
            counter = (self.frames + 1) % 65536
            values = [(reg.result_register, REJECT_VALUE if decision == "reject" else ACCEPT_VALUE),
                      (reg.score_register, round(min(max(score, 0.0), 1.0) * 1000)),
                      (reg.frame_counter_register, counter)]
            for start, run in _consecutive_runs(values):
                self._link.call("write_registers", start, run)
            self.frames += 1
            if when is not None:
                self._written_time = when

    def _beat(self) -> None:
        """Increment the heartbeat register until closed; failures are remembered, never fatal."""
        while not self._stop.wait(self.heartbeat_s):
            value = (self.heartbeats + 1) % 65536
            try:
                self._link.call("write_register", self.registers.heartbeat_register, value)
                self.heartbeats += 1
            except SinkError:  # last_error holds it; the next beat reconnects
                continue

    def close(self) -> None:
        """Stop the heartbeat and close the connection."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5.0)
        self._link.close()


def _consecutive_runs(values: Sequence[tuple[int, int]]) -> list[tuple[int, list[int]]]:
    """Group (address, value) pairs, in their given order, into runs of consecutive addresses."""
    runs: list[tuple[int, list[int]]] = []
    for address, value in values:
        if runs and runs[-1][0] + len(runs[-1][1]) == address:
            runs[-1][1].append(value)
        else:
            runs.append((address, [value]))
    return runs


class ModbusControl:
    """The station's PLC inputs: poll the recipe register and the trigger coil of a :class:`ModbusMap`.

    Every ``poll_s``: when the recipe register changes to n >= 1, ``on_recipe(recipes[n-1])``
    (0 means the PLC does not choose; a value past the list is logged once and ignored).
    When the trigger coil reads 1, the coil is reset to 0 first and then ``on_trigger()``
    fires once (a failed reset fires nothing, so one PLC request is at most one trigger).
    The poll thread survives a PLC outage: it backs off up to 5 s and reconnects.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 502, *, recipes: Sequence[str],
                 on_recipe: Callable[[str], object], on_trigger: Callable[[], object], unit: int = 1,
                 registers: ModbusMap | Mapping[str, int] | None = None, poll_s: float = 0.05,
                 timeout_s: float = 1.0) -> None:
        if not poll_s > 0:
            raise SinkConfigError(f"modbus control: poll_s must be > 0, got {poll_s!r}")
        self.recipes = list(recipes)
        self.registers = ModbusMap.from_options(registers) if registers is not None else ModbusMap()
        self._link = _ModbusLink(host, port, unit=unit, timeout_s=timeout_s, what="modbus control")
        self._on_recipe, self._on_trigger = on_recipe, on_trigger
        self.poll_s = float(poll_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_recipe_value: int | None = None
        self._warned: set[int] = set()
        self.stats: dict[str, Any] = {"polls": 0, "recipes": 0, "triggers": 0, "errors": 0, "last_error": None}

    def start(self) -> ModbusControl:
        """Start polling in a background thread."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="lineguard-modbus-control", daemon=True)
            self._thread.start()
        return self

    @property
    def connected(self) -> bool:
        """Whether the client holds a connection to the PLC now."""
        return self._link.connected

    def poll_once(self) -> None:
        """One poll: apply a changed recipe register, fire a set trigger coil (SinkError if the PLC is away)."""
        reg = self.registers
        value = int(self._link.call("read_holding_registers", reg.recipe_register, count=1).registers[0])
        if value != self._last_recipe_value:
            self._last_recipe_value = value
            if 1 <= value <= len(self.recipes):
                self.stats["recipes"] += 1
                self._call(self._on_recipe, self.recipes[value - 1])
            elif value != 0 and value not in self._warned:
                self._warned.add(value)
                _log.warning("modbus control: recipe register holds %d but the bundle has %d recipes (%s)",
                             value, len(self.recipes), ", ".join(self.recipes) or "none")
        if bool(self._link.call("read_coils", reg.trigger_coil, count=1).bits[0]):
            self._link.call("write_coil", reg.trigger_coil, False)
            self.stats["triggers"] += 1
            self._call(self._on_trigger)
        self.stats["polls"] += 1

    def _call(self, callback: Callable[..., object], *args: Any) -> None:
        try:
            callback(*args)
        except Exception as exc:  # a callback's error must not stop the polling
            self.stats["errors"] += 1
            self.stats["last_error"] = f"{type(exc).__name__}: {exc}"
            _log.warning("modbus control: callback failed: %s", exc)

    def _run(self) -> None:
        delay = self.poll_s
        while not self._stop.is_set():
            try:
                self.poll_once()
                delay = self.poll_s
            except SinkError as exc:
                if self.stats["last_error"] != str(exc):
                    _log.warning("%s", exc)
                self.stats["errors"] += 1
                self.stats["last_error"] = str(exc)
                delay = min(max(delay * 2, self.poll_s), 5.0)
            self._stop.wait(delay)

    def close(self) -> None:
        """Stop polling and close the connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None
        self._link.close()


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SinkSpec:
    """One sink entry of a station config: its kind and its options (keyword arguments of the sink).

    Every kind also takes ``name`` (the outbox's name for it; the kind by default), so a
    station can have two webhooks.
    """

    kind: str
    options: dict[str, Any] = field(default_factory=dict)


SINK_KINDS: dict[str, type] = {"jsonl": JsonLinesSink, "webhook": WebhookSink, "mqtt": MqttSink,
                               "modbus": ModbusSink}


def open_sink(spec: SinkSpec) -> JsonLinesSink | WebhookSink | MqttSink | ModbusSink:
    """Build the sink a spec names, checking its options first (one-line errors naming the option)."""
    cls = SINK_KINDS.get(spec.kind)
    if cls is None:
        raise SinkConfigError(f"unknown sink kind {spec.kind!r}{_suggest(spec.kind, list(SINK_KINDS))}; "
                              f"expected one of: {', '.join(SINK_KINDS)}")
    if not isinstance(spec.options, Mapping):
        raise SinkConfigError(f"sink {spec.kind!r}: options must be a mapping, got {type(spec.options).__name__}")
    options = _check_options(spec.kind, cls, dict(spec.options))
    options.setdefault("name", spec.kind)
    sink: JsonLinesSink | WebhookSink | MqttSink | ModbusSink = cls(**options)
    return sink


def _check_options(kind: str, cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """Refuse unknown, missing or mistyped options of ``cls.__init__`` before calling it."""
    import inspect

    params = {n: p for n, p in inspect.signature(vars(cls)["__init__"]).parameters.items() if n != "self"}
    hints = typing.get_type_hints(vars(cls)["__init__"], globalns=globals())
    for key in options:
        if key not in params:
            raise SinkConfigError(f"sink {kind!r}: unknown option {key!r}{_suggest(str(key), list(params))}; "
                                  f"expected one of: {', '.join(params)}")
    for pname, param in params.items():
        if param.default is inspect.Parameter.empty and pname not in options:
            raise SinkConfigError(f"sink {kind!r}: option {pname!r} is required")
    for key, value in options.items():
        hint = hints.get(key)
        if key == "registers":
            options[key] = ModbusMap.from_options(value)
        elif hint is not None and not _matches(value, hint):
            raise SinkConfigError(f"sink {kind!r}: option {key!r} must be {_hint_name(hint)}, got {value!r}")
    return options


def _matches(value: Any, hint: Any) -> bool:
    """A plain runtime check of a value against a simple annotation (str, int, float, bool, unions, paths)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin is not None:
        hint = origin
    try:
        return isinstance(value, hint)
    except TypeError:
        return True


def _hint_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_hint_name(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint) or hint
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        origin, getattr(origin, "__name__", str(origin)))


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_sink(text: str) -> SinkSpec:
    """A sink from the CLI's ``--sink`` shorthand.

    ``-`` (JSON lines on stdout), ``jsonl:PATH`` or a path ending ``.jsonl``,
    ``http(s)://...`` (webhook), ``mqtt://[user:pass@]host[:1883]`` and ``mqtts://`` (TLS,
    port 8883), ``modbus://host[:502]``.
    """
    text = text.strip()
    if text == "-":
        return SinkSpec("jsonl", {"path": "-"})
    if text.startswith("jsonl:"):
        return SinkSpec("jsonl", {"path": text[len("jsonl:"):] or "-"})
    parts = urllib.parse.urlsplit(text)
    if parts.scheme in ("http", "https"):
        return SinkSpec("webhook", {"url": text})
    if parts.scheme in ("mqtt", "mqtts", "modbus"):
        if not parts.hostname:
            raise SinkConfigError(f"--sink {text!r}: no host; expected {parts.scheme}://HOST[:PORT]")
        try:
            port = parts.port
        except ValueError:
            raise SinkConfigError(f"--sink {text!r}: the port is not a number 1..65535") from None
        if parts.scheme == "modbus":
            return SinkSpec("modbus", {"host": parts.hostname, "port": port or 502})
        options: dict[str, Any] = {"host": parts.hostname, "port": port or (8883 if parts.scheme == "mqtts" else 1883)}
        if parts.scheme == "mqtts":
            options["tls"] = True
        if parts.username:
            options["username"] = urllib.parse.unquote(parts.username)
            if parts.password is not None:
                options["password"] = urllib.parse.unquote(parts.password)
        return SinkSpec("mqtt", options)
    if text.endswith(".jsonl"):
        return SinkSpec("jsonl", {"path": text})
    raise SinkConfigError(f"--sink {text!r} is not understood; expected '-', jsonl:PATH, FILE.jsonl, "
                          "http(s)://URL, mqtt(s)://HOST[:PORT] or modbus://HOST[:PORT]")


__all__ = [
    "DEFAULT_ALERT_TOPIC",
    "DEFAULT_RECIPE_TOPIC",
    "DEFAULT_TOPIC",
    "DEFAULT_TRIGGER_TOPIC",
    "SINK_KINDS",
    "JsonLinesSink",
    "ModbusControl",
    "ModbusMap",
    "ModbusSink",
    "MqttControl",
    "MqttSink",
    "SinkConfigError",
    "SinkSpec",
    "WebhookSink",
    "open_sink",
    "parse_sink",
]
