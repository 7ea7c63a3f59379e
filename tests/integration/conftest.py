"""Servers for the integration tier, started by the tests themselves (nothing from the network).

``s3_server``: moto's standalone S3-compatible server on 127.0.0.1 (a free port), one
per test session. ``s3_bucket``: a fresh, empty bucket on it with the AWS variables set
for the test (endpoint, fake credentials, region) and fsspec's filesystem cache
cleared before and after, so every test talks to the server it is given. Use it as::

    def test_something(s3_bucket: str) -> None:   # "s3://lg-test-3f2a…"
        storage.write_bytes(f"{s3_bucket}/x.bin", b"...")
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

FAKE_KEY, FAKE_SECRET, REGION = "testing", "testing", "us-east-1"


def _clear_fsspec_cache() -> None:
    """s3fs keeps one filesystem object per set of options, with its cached listings: start clean."""
    try:
        import s3fs
    except ImportError:
        return
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of an in-memory S3-compatible server (moto) for this test session."""
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install lineguard[cloud])")
    server_mod = pytest.importorskip(
        "moto.server", reason="moto[server] is not installed (pip install lineguard[dev])"
    )
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """AWS variables pointing at the test server (and never at a real account); yields the endpoint."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "FSSPEC_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    _clear_fsspec_cache()
    yield s3_server
    _clear_fsspec_cache()


@pytest.fixture
def s3_bucket(s3_env: str) -> str:
    """A fresh, empty bucket on the test server, as an ``s3://`` URL."""
    import boto3

    name = f"lg-test-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_env,
        aws_access_key_id=FAKE_KEY,
        aws_secret_access_key=FAKE_SECRET,
        region_name=REGION,
    )
    client.create_bucket(Bucket=name)
    return f"s3://{name}"


# --------------------------------------------------------------------------- the line's servers
#
# ``mosquitto``: a real mosquitto broker (Debian's package, installed by ``make install``) on
# a free 127.0.0.1 port with persistence in the test's tmp folder. ``modbus_server``:
# pymodbus's own TCP server standing in for the PLC. Both yield an object the test can
# ``stop()`` and ``start()`` again on the same port (an outage). See tests/integration/_servers.py.

from tests.integration._servers import ModbusServer, Mosquitto, free_port  # noqa: E402


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A fresh mosquitto broker for this test (skipped only when the mosquitto binary is not installed)."""
    import shutil
    from pathlib import Path

    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)
    if binary is None:
        pytest.skip("the mosquitto binary is not installed (apt-get install mosquitto; `make install` does it)")
    broker = Mosquitto(binary, tmp_path_factory.mktemp("mosquitto"), free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def modbus_server() -> Iterator[ModbusServer]:
    """pymodbus's own TCP server on a free 127.0.0.1 port, standing in for the PLC."""
    pytest.importorskip("pymodbus", reason="pymodbus is not installed (pip install lineguard[line])")
    server = ModbusServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
