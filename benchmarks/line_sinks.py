"""How fast each sink acknowledges one message: can one outbox worker per sink keep up with the line?

Usage:
    .venv/bin/python benchmarks/line_sinks.py [--messages 500] [--rounds 3]

The outbox worker sends one message at a time and waits for its acknowledgement (PUBACK,
HTTP 2xx, the Modbus write's reply), so a sink's sequential rate bounds the decisions
per second that sink can carry without a growing backlog. Measured on 127.0.0.1 against
the same real servers the tests start (mosquitto, the standard library's HTTP server,
pymodbus's own TCP server): a network hop to a real broker or PLC adds its round trip to
every message. Writes the ``## Line sinks`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for tests.integration._servers

from _report import load_note, median, percentile, write_section
from tests.integration._servers import ModbusServer, Mosquitto, free_port

from lineguard.edge.outbox import OutboxMessage


def _message(i: int) -> OutboxMessage:
    payload = {"frame_id": f"b-{i}", "time": time.time(), "station": "bench", "source": "video:/v.mp4#1",
               "recipe": "vanilla", "label": "good", "score": 0.1, "decision": "accept", "threshold": 0.5,
               "bundle_name": "cones", "bundle_version": "1", "latency_ms": 2.0, "stats": {"brightness": 0.5}}
    return OutboxMessage(id=i, sink="bench", key=f"bench:b-{i}", payload=payload, attempts=0, created_at=0.0)


def _round(sink: Any, n: int) -> tuple[float, list[float]]:
    """Send n messages one after the other; (messages per second, per-message ms)."""
    times = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        sink.send(_message(i))
        times.append((time.perf_counter() - t0) * 1000)
    return n / (time.perf_counter() - start), times


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    from lineguard.edge.sinks import JsonLinesSink, ModbusSink, MqttSink, WebhookSink

    work = Path(tempfile.mkdtemp(prefix="lg-line-bench-"))
    cleanup: list[Callable[[], None]] = []
    sinks: list[tuple[str, Any]] = []
    try:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if Path(binary).exists():
            broker = Mosquitto(binary, work / "mosquitto", free_port())
            broker.start()
            cleanup.append(broker.stop)
            mq = MqttSink("127.0.0.1", broker.port, client_id="bench-sink", timeout_s=5.0)
            for _ in range(500):
                if mq.connected:
                    break
                time.sleep(0.01)
            sinks.append(("MQTT, QoS 1, wait for PUBACK (mosquitto)", mq))
        http = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
        threading.Thread(target=http.serve_forever, daemon=True).start()
        cleanup.append(http.shutdown)
        sinks.append(("webhook POST, 200 (http.server)", WebhookSink(f"http://127.0.0.1:{http.server_address[1]}/",
                                                                   timeout_s=5.0)))
        plc = ModbusServer(free_port())
        plc.start()
        cleanup.append(plc.stop)
        sinks.append(("Modbus TCP, coil + 3 registers (pymodbus server)",
                      ModbusSink("127.0.0.1", plc.port, heartbeat_s=0, max_age_s=None)))
        sinks.append(("JSON lines, file, flush", JsonLinesSink(work / "d.jsonl")))
        sinks.append(("JSON lines, file, fsync", JsonLinesSink(work / "f.jsonl", fsync=True)))

        rows = []
        for label, sink in sinks:
            _round(sink, min(50, args.messages))  # warm-up
            rates, lat = [], []
            for _ in range(args.rounds):
                rate, times = _round(sink, args.messages)
                rates.append(rate)
                lat.append((median(times), percentile(times, 99)))
            rows.append((label, median(rates), median([m for m, _ in lat]), median([p for _, p in lat])))
            sink.close()
            print(f"{label}: {rows[-1][1]:.0f} msg/s, median {rows[-1][2]:.2f} ms, p99 {rows[-1][3]:.2f} ms",
                  flush=True)
    finally:
        for fn in reversed(cleanup):
            fn()
        shutil.rmtree(work, ignore_errors=True)

    table = ["| sink (127.0.0.1) | messages/s, one at a time | median ms | p99 ms |", "| --- | --- | --- | --- |"]
    table += [f"| {label} | {rate:.0f} | {med:.2f} | {p99:.2f} |" for label, rate, med, p99 in rows]
    body = (f"{args.rounds} rounds of {args.messages} messages per sink, each sent and acknowledged before the next "
            "(as the outbox worker sends); medians over rounds. " + load_note() + "\n\n" + "\n".join(table) +
            "\n\nOne worker per sink delivers at most this rate; P2's 500 decisions/s per sink needs a sink at or "
            "above 500 messages/s here, with room for the network's round trip on a real line. The HTTP and Modbus "
            "servers run in this Python process (threads sharing the interpreter with the client), mosquitto in "
            "its own: their rates are a floor, and the p99 is the shared machine's. A Modbus sink that falls "
            "behind does not pile up: decisions older than its max_age_s (2 s) are acknowledged without a write "
            "(the PLC holds the current decision only), so it carries the newest decisions it can.")
    write_section("Line sinks", body, "python benchmarks/line_sinks.py" + "".join(f" {a}" for a in argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
