"""MqttSink and MqttControl against a real mosquitto broker that the test starts, stops and restarts."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from lineguard.edge.outbox import OutboxMessage, SinkError
from lineguard.edge.sinks import MqttControl, MqttSink, SinkSpec, open_sink
from tests.integration._servers import Mosquitto, wait_for

pytestmark = pytest.mark.integration
mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (pip install lineguard[line])")


def message(i: int, *, station: str = "st1", recipe: str | None = "vanilla", **extra: Any) -> OutboxMessage:
    payload = {"frame_id": f"run-{i}", "station": station, "recipe": recipe, "decision": "reject" if i % 2 else
               "accept", "score": 0.25 + i / 1000, **extra}
    return OutboxMessage(id=i, sink="mqtt", key=f"{station}:run-{i}", payload=payload, attempts=0, created_at=0.0)


class Listener:
    """A plain paho subscriber on ``#`` (QoS 1, persistent session): what the line's receiver sees."""

    def __init__(self, broker: Mosquitto) -> None:
        self.received: list[tuple[str, int, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"listener-{uuid.uuid4().hex[:8]}",
                                  clean_session=False)
        self.client.reconnect_delay_set(0.2, 1)
        self.connected = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe("#", qos=1)
        self.client.on_subscribe = lambda *_: self.connected.set()
        self.client.on_disconnect = lambda *_: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self.connected.wait(15), "the test's listener could not subscribe"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            if msg.topic.endswith(("/decision", "/alert")) or msg.topic.startswith("plant/"):
                self.received.append((msg.topic, msg.qos, json.loads(msg.payload)))

    def arrived_keys(self) -> list[str]:
        with self._lock:
            return [body["key"] for _, _, body in self.received]

    def publish(self, topic: str, payload: str, *, retain: bool = False) -> None:
        assert self.connected.wait(30), "the test's listener did not reconnect"
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def listener(mosquitto: Mosquitto) -> Iterator[Listener]:
    lst = Listener(mosquitto)
    try:
        yield lst
    finally:
        lst.close()


def sink_for(broker: Mosquitto, **options: Any) -> MqttSink:
    sink = MqttSink("127.0.0.1", broker.port, client_id=f"sink-{uuid.uuid4().hex[:8]}", reconnect_min_s=0.1,
                    reconnect_max_s=0.5, **options)
    assert wait_for(lambda: sink.connected), f"the sink did not connect: {sink.last_error}"
    return sink


def test_messages_arrive_at_qos1_with_keys_on_station_and_recipe_topics(mosquitto: Mosquitto,
                                                                         listener: Listener) -> None:
    sink = sink_for(mosquitto, timeout_s=5.0)
    try:
        sink.send(message(1, recipe="vanilla"))
        sink.send(message(2, recipe="mint chips"))
        sink.send(message(3, recipe=None))
        sink.send(message(4, station="st/2", recipe="a+b#"))
        sink.send(message(5, kind="alert", recipe="vanilla"))
        assert wait_for(lambda: len(listener.received) == 5), listener.received
    finally:
        sink.close()
    topics = [t for t, _, _ in listener.received]
    assert topics == ["lineguard/st1/vanilla/decision", "lineguard/st1/mint chips/decision",
                      "lineguard/st1/default/decision", "lineguard/st_2/a_b_/decision", "lineguard/st1/alert"]
    assert {qos for _, qos, _ in listener.received} == {1}
    assert listener.arrived_keys() == ["st1:run-1", "st1:run-2", "st1:run-3", "st/2:run-4", "st1:run-5"]
    first = listener.received[0][2]
    assert first == {**message(1).payload, "key": "st1:run-1"}
    assert sink.published == 5


def test_broker_outage_raises_within_the_timeout_then_delivers_again(mosquitto: Mosquitto,
                                                                     listener: Listener) -> None:
    sink = sink_for(mosquitto, timeout_s=0.5)
    try:
        sink.send(message(1))
        mosquitto.stop()
        assert wait_for(lambda: not sink.connected), "the sink did not notice the broker going away"
        for i in (2, 3):
            started = time.monotonic()
            with pytest.raises(SinkError, match=r"not connected|no PUBACK"):
                sink.send(message(i))
            # not a speed check: a send must give up rather than hang (0.5 s timeout, generous bound)
            assert time.monotonic() - started < 10.0
        mosquitto.start()

        def delivered(i: int) -> bool:
            try:
                sink.send(message(i))
            except SinkError:
                return False
            return True

        assert wait_for(lambda: delivered(2), timeout_s=30, interval_s=0.1), sink.last_error
        sink.send(message(3))
        assert wait_for(lambda: listener.arrived_keys()[-2:] == ["st1:run-2", "st1:run-3"], timeout_s=30), listener.arrived_keys()
    finally:
        sink.close()
    keys = listener.arrived_keys()
    assert keys[0] == "st1:run-1" and set(keys) == {"st1:run-1", "st1:run-2", "st1:run-3"}


def test_a_publish_without_puback_raises_sink_error(mosquitto: Mosquitto, listener: Listener) -> None:
    """The broker freezes (SIGSTOP) with the connection up: no PUBACK, so the sink must not count it as sent."""
    sink = sink_for(mosquitto, timeout_s=0.5)
    assert mosquitto.proc is not None
    try:
        mosquitto.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(SinkError, match="no PUBACK"):
                sink.send(message(1))
            assert sink.published == 0
        finally:
            mosquitto.proc.send_signal(signal.SIGCONT)
        sink.send(message(2))  # the outbox's retry; the frozen publish may also arrive (same key, at-least-once)
        assert wait_for(lambda: "st1:run-2" in listener.arrived_keys())
    finally:
        sink.close()


def test_open_sink_builds_an_mqtt_sink(mosquitto: Mosquitto, listener: Listener) -> None:
    sink = open_sink(SinkSpec("mqtt", {"host": "127.0.0.1", "port": mosquitto.port, "client_id": "spec-sink",
                                       "topic": "plant/{station}/{recipe}", "timeout_s": 5.0}))
    try:
        assert sink.name == "mqtt"
        sink.send(message(7))
        assert wait_for(lambda: len(listener.received) == 1)
    finally:
        sink.close()
    assert listener.received[0][0] == "plant/st1/vanilla"


def test_control_topics_set_the_recipe_and_fire_triggers(mosquitto: Mosquitto, listener: Listener) -> None:
    recipes: list[str] = []
    triggers: list[float] = []
    # a retained recipe is applied when the station comes up; a retained trigger is stale and ignored
    listener.publish("lineguard/st1/recipe/set", "mint", retain=True)
    listener.publish("lineguard/st1/trigger", "1", retain=True)

    def on_recipe(name: str) -> None:
        if name == "unknown":
            raise ValueError("no such recipe")
        recipes.append(name)

    control = MqttControl("127.0.0.1", mosquitto.port, station="st1", on_recipe=on_recipe,
                          on_trigger=lambda: triggers.append(time.time()), client_id="st1-control",
                          reconnect_min_s=0.1, reconnect_max_s=0.5).start()
    try:
        assert control.wait_subscribed(15)
        assert wait_for(lambda: recipes == ["mint"]), recipes
        listener.publish("lineguard/st1/recipe/set", "vanilla")
        listener.publish("lineguard/st1/recipe/set", '{"recipe": "chocolate"}')
        listener.publish("lineguard/st1/recipe/set", "unknown")  # the callback raises: counted, not fatal
        listener.publish("lineguard/st1/recipe/set", "{not json")
        listener.publish("lineguard/st2/trigger", "")  # another station's trigger
        for _ in range(3):
            listener.publish("lineguard/st1/trigger", "")
        assert wait_for(lambda: len(triggers) == 3 and len(recipes) == 3), (recipes, triggers)
        assert wait_for(lambda: control.stats["errors"] == 1)
        assert recipes == ["mint", "vanilla", "chocolate"]
        assert control.stats["ignored"] == 2  # the retained trigger and the malformed recipe
        assert "no such recipe" in control.stats["last_error"]

        # the control survives an outage: resubscribed after the broker comes back
        mosquitto.stop()
        assert wait_for(lambda: not control.connected)
        mosquitto.start()
        assert wait_for(lambda: control.connected, timeout_s=30)
        assert control.wait_subscribed(15)
        listener.publish("lineguard/st1/recipe/set", "strawberry")
        listener.publish("lineguard/st1/trigger", "")
        assert wait_for(lambda: recipes[-1] == "strawberry" and len(triggers) == 4, timeout_s=30), (recipes,
                                                                                                  triggers)
        assert recipes == ["mint", "vanilla", "chocolate", "strawberry"]  # the replayed retained one ignored
    finally:
        control.close()

    # offline station: a recipe set meanwhile is queued by the broker (persistent session, QoS 1) and
    # applied at the restart; the older retained recipe replayed after it does not undo it; a trigger
    # sent meanwhile is not queued (a trigger means "inspect the part that is there now")
    listener.publish("lineguard/st1/recipe/set", "lemon")
    listener.publish("lineguard/st1/trigger", "")
    again: list[str] = []
    restarted = MqttControl("127.0.0.1", mosquitto.port, station="st1", on_recipe=again.append,
                            on_trigger=lambda: triggers.append(time.time()), client_id="st1-control").start()
    try:
        assert restarted.wait_subscribed(15)
        assert wait_for(lambda: again == ["lemon"] and restarted.stats["ignored"] == 2), (again, restarted.stats)
        listener.publish("lineguard/st1/trigger", "")
        assert wait_for(lambda: restarted.stats["triggers"] == 1)
        assert again == ["lemon"] and len(triggers) == 5
    finally:
        restarted.close()
