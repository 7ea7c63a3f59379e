"""ModbusSink and ModbusControl against pymodbus's own TCP server (standing in for the PLC)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from lineguard.edge.outbox import OutboxMessage, SinkError, SinkRejected
from lineguard.edge.sinks import ModbusControl, ModbusMap, ModbusSink, SinkSpec, open_sink
from tests.integration._servers import ModbusServer, wait_for

pytestmark = pytest.mark.integration
pytest.importorskip("pymodbus", reason="pymodbus is not installed (pip install lineguard[line])")


class Plc:
    """The PLC program's side of the memory: a second Modbus client reading and writing the server."""

    def __init__(self, server: ModbusServer) -> None:
        from pymodbus.client import ModbusTcpClient

        self.server = server
        self.client = ModbusTcpClient("127.0.0.1", port=server.port, timeout=2, retries=1)

    def _ok(self, response: Any) -> Any:
        assert not response.isError(), response
        return response

    def coil(self, address: int) -> bool:
        return bool(self._ok(self.client.read_coils(address, count=1)).bits[0])

    def registers(self, address: int, count: int = 1) -> list[int]:
        return list(self._ok(self.client.read_holding_registers(address, count=count)).registers)

    def set_register(self, address: int, value: int) -> None:
        self._ok(self.client.write_register(address, value))

    def set_coil(self, address: int, value: bool) -> None:
        self._ok(self.client.write_coil(address, value))

    def reconnect(self) -> None:
        self.client.close()


@pytest.fixture
def plc(modbus_server: ModbusServer) -> Iterator[Plc]:
    view = Plc(modbus_server)
    try:
        yield view
    finally:
        view.client.close()


@dataclass(frozen=True)
class Rec:
    decision: str
    score: float
    time: float = field(default_factory=time.time)


def message(i: int, decision: str, score: float, *, age_s: float = 0.0) -> OutboxMessage:
    payload = {"station": "st1", "decision": decision, "score": score, "time": time.time() - age_s}
    return OutboxMessage(id=i, sink="modbus", key=f"st1:f{i}", payload=payload, attempts=0, created_at=0.0)


def test_decisions_are_written_where_the_map_says(modbus_server: ModbusServer, plc: Plc) -> None:
    regs = ModbusMap(reject_coil=5, result_register=20, score_register=21, frame_counter_register=30,
                     heartbeat_register=40)
    sink = ModbusSink("127.0.0.1", modbus_server.port, registers=regs, heartbeat_s=0)
    try:
        sink.send(message(1, "reject", 0.8734))
        assert plc.coil(5) is True
        assert plc.registers(20, 2) == [2, 873]  # result 2 = reject, score x 1000
        assert plc.registers(30) == [1]          # frame counter
        sink.signal_now(Rec("accept", 0.0214))  # the loop's immediate signal: same record layout
        assert plc.coil(5) is False
        assert plc.registers(20, 2) == [1, 21]
        assert plc.registers(30) == [2]
        sink.signal_now(Rec("reject", 1.7))     # out of range scores are clamped to 0..1000
        assert plc.registers(21) == [1000] and plc.coil(5) is True
        # nothing was written outside the map (the default map's addresses stay untouched)
        assert plc.registers(0, 4) == [0, 0, 0, 0] and plc.coil(0) is False
        assert plc.registers(40) == [0]  # heartbeat off
    finally:
        sink.close()
    assert sink.frames == 3


def test_late_decisions_do_not_drive_the_plc(modbus_server: ModbusServer, plc: Plc) -> None:
    """A reject replayed after an outage, or older than the decision on the PLC, must not move the coil."""
    sink = ModbusSink("127.0.0.1", modbus_server.port, heartbeat_s=0, max_age_s=60.0)
    try:
        fresh = message(2, "accept", 0.1)
        sink.send(fresh)
        sink.send(message(1, "reject", 0.9, age_s=3600.0))  # an outbox replay: stale
        older = OutboxMessage(3, "modbus", "st1:f3", {**fresh.payload, "decision": "reject",
                                                      "time": fresh.payload["time"] - 0.5}, 0, 0.0)
        sink.send(older)  # fresh enough, but older than what the PLC shows: superseded
        assert plc.coil(0) is False and plc.registers(0, 3) == [1, 100, 1]
        assert (sink.frames, sink.stale, sink.superseded) == (1, 1, 1)
        sink.signal_now(Rec("reject", 0.95))
        assert plc.coil(0) is True and plc.registers(0, 3) == [2, 950, 2]
    finally:
        sink.close()
    unlimited = ModbusSink("127.0.0.1", modbus_server.port, heartbeat_s=0, max_age_s=None)
    try:
        unlimited.send(message(4, "accept", 0.2, age_s=3600.0))  # max_age_s=None: written however late
        assert plc.coil(0) is False and plc.registers(0, 2) == [1, 200]
    finally:
        unlimited.close()


def test_bad_payloads_are_rejected_for_good(modbus_server: ModbusServer) -> None:
    sink = ModbusSink("127.0.0.1", modbus_server.port, heartbeat_s=0)
    try:
        with pytest.raises(SinkRejected, match="decision must be"):
            sink.send(message(1, "maybe", 0.5))
        with pytest.raises(SinkRejected, match="numeric score"):
            sink.send(OutboxMessage(1, "modbus", "st1:x", {"decision": "reject", "time": time.time()}, 0, 0.0))
        with pytest.raises(SinkRejected, match="finite"):
            sink.signal_now(Rec("reject", float("nan")))
    finally:
        sink.close()


def test_an_address_the_plc_does_not_have_is_rejected(modbus_server: ModbusServer) -> None:
    """The server has 200 registers: an address past them is a Modbus exception, i.e. a wrong map."""
    sink = ModbusSink("127.0.0.1", modbus_server.port, registers=ModbusMap(result_register=5000), heartbeat_s=0)
    try:
        with pytest.raises(SinkRejected, match="check the register map"):
            sink.send(message(1, "accept", 0.1))
    finally:
        sink.close()


def test_heartbeat_moves(modbus_server: ModbusServer, plc: Plc) -> None:
    sink = ModbusSink("127.0.0.1", modbus_server.port, heartbeat_s=0.05)
    try:
        assert wait_for(lambda: plc.registers(3)[0] >= 1)
        first = plc.registers(3)[0]
        assert wait_for(lambda: plc.registers(3)[0] >= first + 2)
    finally:
        sink.close()
    stopped = plc.registers(3)[0]
    time.sleep(0.2)
    assert plc.registers(3)[0] == stopped  # closing the sink stops the heartbeat: the PLC sees it freeze


def test_plc_down_raises_sink_error_then_works_again(modbus_server: ModbusServer, plc: Plc) -> None:
    sink = open_sink(SinkSpec("modbus", {"host": "127.0.0.1", "port": modbus_server.port, "timeout_s": 0.5,
                                         "heartbeat_s": 0.05}))
    assert isinstance(sink, ModbusSink)
    try:
        sink.send(message(1, "reject", 0.9))
        modbus_server.stop()
        started = time.monotonic()
        with pytest.raises(SinkError, match="modbus sink"):
            sink.send(message(2, "accept", 0.1))
        assert time.monotonic() - started < 10.0  # gives up instead of hanging (not a speed check)
        with pytest.raises(SinkError):
            sink.signal_now(Rec("reject", 0.9))
        assert wait_for(lambda: sink.last_error is not None)  # the heartbeat notices too
        modbus_server.start()  # same port, memory kept (a PLC that rebooted its network stack)
        plc.reconnect()
        sink.send(message(2, "accept", 0.1))  # the next request reconnects by itself
        assert plc.registers(0, 3) == [1, 100, 2] and plc.coil(0) is False
        beat = plc.registers(3)[0]
        assert wait_for(lambda: plc.registers(3)[0] > beat)  # the heartbeat resumed
    finally:
        sink.close()


def test_control_reads_the_recipe_register_and_fires_on_the_trigger_coil(modbus_server: ModbusServer,
                                                                          plc: Plc) -> None:
    recipes: list[str] = []
    triggers: list[int] = []
    control = ModbusControl("127.0.0.1", modbus_server.port, recipes=["vanilla", "mint", "chocolate"],
                            on_recipe=recipes.append, on_trigger=lambda: triggers.append(1), poll_s=0.01,
                            registers=ModbusMap(recipe_register=50, trigger_coil=7), timeout_s=0.5).start()
    try:
        assert wait_for(lambda: control.stats["polls"] >= 2)
        assert recipes == [] and triggers == []  # register 0 = the PLC does not choose; coil 0 = no trigger
        plc.set_register(50, 2)
        assert wait_for(lambda: recipes == ["mint"]), recipes
        plc.set_register(50, 9)  # past the list: logged once and ignored
        plc.set_register(50, 3)
        assert wait_for(lambda: recipes[-1:] == ["chocolate"]), recipes
        for n in range(1, 4):
            plc.set_coil(7, True)
            assert wait_for(lambda n=n: len(triggers) == n)  # type: ignore[misc]
            assert wait_for(lambda: plc.coil(7) is False)  # the station acknowledged by resetting the coil
        polls = control.stats["polls"]
        assert wait_for(lambda: control.stats["polls"] > polls + 5)
        assert len(triggers) == 3  # one coil set, one trigger: never re-fired while polling on

        # the PLC goes away and comes back: polling resumes by itself
        modbus_server.stop()
        assert wait_for(lambda: control.stats["errors"] >= 1)
        modbus_server.start()
        plc.reconnect()
        plc.set_coil(7, True)
        assert wait_for(lambda: len(triggers) == 4, timeout_s=30)
        plc.set_register(50, 1)
        assert wait_for(lambda: recipes[-1:] == ["vanilla"], timeout_s=30)
    finally:
        control.close()
    assert recipes == ["mint", "chocolate", "vanilla"]
