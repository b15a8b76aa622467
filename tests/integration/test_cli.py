"""The `comms` command as a user runs it: where it binds, what it logs, the modes of the files
it keeps, and the cap on gRPC connections."""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from comms import db, devkeys
from tests.integration.conftest import free_port
from tests.tokens import AUDIENCE, ISSUER, Keys

COMMS = str(Path(sys.executable).parent / "comms")


class Running:
    """A `comms` process whose log lines are collected as it writes them."""

    def __init__(self, argv: list[str], env: dict[str, str], stdout: Any = None) -> None:
        self.process = subprocess.Popen(
            [COMMS, *argv], env=env, stdout=stdout, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline and self.process.poll() is None, self.lines
            time.sleep(0.05)

    def messages(self) -> list[str]:
        """The server's log lines (JSON, as its stderr is no terminal) as 'LEVEL logger:
        message', without their time stamps."""
        records = [json.loads(line) for line in self.lines if line.startswith("{")]
        return [f"{r['level']} {r['logger']}: {r['message']}" for r in records]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        status = self.process.wait(30)
        self._reader.join(5)
        assert self.process.stderr is not None
        self.process.stderr.close()
        return status


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMMS_")}
    # Free operator ports: the defaults may be taken on a shared machine.
    return env | {"COMMS_METRICS_PORT": "0", "COMMS_GATEWAY_METRICS_PORT": "0"} | settings


def _listening(port: int) -> set[str]:
    """The addresses sockets listen on at port (/proc/net/tcp and tcp6, IPv4-mapped as IPv4)."""
    found = set()
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            host, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(host)  # 32-bit words, each in host (little-endian) order
                packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                address = ipaddress.ip_address(packed)
                mapped = getattr(address, "ipv4_mapped", None)
                found.add(str(mapped or address))
    return found


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory as an earlier version left it: readable by everyone."""
    data = tmp_path / "data"
    data.mkdir()
    db.prepare(f"sqlite:///{data / 'comms.db'}").close()
    devkeys.ensure_keys(data)
    for path in [data / "comms.db", data / devkeys.PRIVATE_KEY_FILE, data / devkeys.JWKS_FILE]:
        path.chmod(0o644)
    data.chmod(0o755)
    yield data


def test_development_binds_loopback_logs_it_and_keeps_its_files_private(
    loose_data_dir: Path,
) -> None:
    data = loose_data_dir
    http_port, grpc_port, admin_port = free_port(), free_port(), free_port()
    metrics_port, stats_port = free_port(), free_port()
    up = Running(
        [
            *("up", "--data-dir", str(data), "--http-port", str(http_port)),
            *("--grpc-port", str(grpc_port), "--admin-port", str(admin_port)),
            *("--metrics-port", str(metrics_port), "--gateway-metrics-port", str(stats_port)),
        ],
        _env(COMMS_ENV="development", COMMS_HTTP_PORT="1", COMMS_GRPC_PORT="2"),
    )
    try:
        up.wait_for("HTTP gateway listening")
        messages = up.messages()
        for expected in [
            f"WARNING comms.datadir: {data} was mode 755, readable by others: now 700",
            f"WARNING comms.datadir: {data / 'comms.db'} was mode 644, readable by others: now 600",
            f"WARNING comms.datadir: {data / devkeys.PRIVATE_KEY_FILE} was mode 644, readable by others: now 600",
            f"WARNING comms.datadir: {data / devkeys.JWKS_FILE} was mode 644, readable by others: now 600",
            f"INFO comms: gRPC server listening on 127.0.0.1:{grpc_port} (store: sqlite:///{data / 'comms.db'})",
            f"INFO comms: HTTP gateway listening on http://127.0.0.1:{http_port} (Envoy admin on 127.0.0.1:{admin_port})",
            f"INFO comms: Prometheus metrics on http://127.0.0.1:{metrics_port}/metrics",
            f"INFO comms: API reference on http://127.0.0.1:{http_port}/docs (the document: http://127.0.0.1:{http_port}/openapi.json)",
            f"INFO comms: health: http://127.0.0.1:{http_port}/healthz (alive), http://127.0.0.1:{http_port}/readyz (ready), no token",
            f"INFO comms: Envoy's Prometheus stats on http://127.0.0.1:{stats_port}/stats/prometheus",
        ]:
            assert expected in messages
        listening = [_listening(port) for port in (http_port, grpc_port, metrics_port, stats_port)]
        assert listening == [{"127.0.0.1"}] * 4

        token = devkeys.mint_token(data, ["sequences:write"])
        connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        body = {"brand_id": "b1", "name": "Private", "steps": []}
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        connection.request("POST", "/v1/sequences", json.dumps(body), headers)
        answer = connection.getresponse()
        assert (answer.status, json.loads(answer.read())["name"]) == (201, "Private")
        connection.close()
        created = 'comms_rpc_requests_total{code="OK",method="comms.v1.SequenceService/CreateSequence"} 1.0'
        assert created in _get(f"http://127.0.0.1:{metrics_port}/metrics").splitlines()
        stats = _get(f"http://127.0.0.1:{stats_port}/stats/prometheus")
        assert (
            'envoy_http_downstream_rq_xx{envoy_response_code_class="2",envoy_http_conn_manager_prefix="comms"} 1'
            in stats
        )

        assert _mode(data) == 0o700
        files = {path.name: _mode(path) for path in data.iterdir()}
        assert {"comms.db-wal", "comms.db-shm", f"envoy-{http_port}.yaml"} <= files.keys()
        assert files == dict.fromkeys(files, 0o600)
    finally:
        code = up.stop()
        assert code == 0, up.lines
    names = sqlite3.connect(data / "comms.db").execute("SELECT name FROM sequences").fetchall()
    assert names == [("Private",)]


def _health(channel: grpc.Channel, metadata: Any = None) -> int:
    request = health_pb2.HealthCheckRequest()
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(request, timeout=3, metadata=metadata).status)


def _fresh_channel(port: int) -> grpc.Channel:
    # Its own connection: channels to one target otherwise share one.
    return grpc.insecure_channel(f"127.0.0.1:{port}", [("grpc.use_local_subchannel_pool", 1)])


def test_production_binds_every_interface_and_caps_connections(tmp_path: Path, keys: Keys) -> None:
    port, cap = free_port(), 5
    serve = Running(
        ["serve", "--grpc-port", str(port)],
        _env(
            COMMS_DATA_DIR=str(tmp_path),
            COMMS_AUTH_JWKS_PATH=str(keys.jwks_path),
            COMMS_AUTH_ISSUER=ISSUER,
            COMMS_AUTH_AUDIENCE=AUDIENCE,
            COMMS_MAX_CONNECTIONS=str(cap),
        ),
    )
    idle: list[socket.socket] = []
    try:
        serve.wait_for("gRPC server listening")
        assert (
            f"INFO comms: gRPC server listening on 0.0.0.0:{port} (every interface, IPv4 and IPv6) (store: sqlite:///{tmp_path / 'comms.db'})"
            in serve.messages()
        )
        assert _listening(port) == {"::"}  # grpc's dual-stack socket for a wildcard
        first = _fresh_channel(port)
        assert _health(first) == health_pb2.HealthCheckResponse.SERVING
        # The cap less the one connection above, idle; then three past the cap.
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(cap + 2)]
        received = [len(sock.recv(1024)) for sock in idle]
        # Those within the cap get the server's HTTP/2 SETTINGS; those past it are closed.
        assert [n > 0 for n in received] == [True] * (cap - 1) + [False] * 3
        # Connections already open are still served; a new one is refused while at the cap.
        assert _health(first) == health_pb2.HealthCheckResponse.SERVING
        with _fresh_channel(port) as refused, pytest.raises(grpc.RpcError) as caught:
            _health(refused)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        for sock in idle:
            sock.close()
        time.sleep(0.5)
        with _fresh_channel(port) as fresh:
            assert _health(fresh) == health_pb2.HealthCheckResponse.SERVING
        first.close()
    finally:
        for sock in idle:
            sock.close()
        assert serve.stop() == 0


def test_the_standard_otel_variables_turn_traces_on(tmp_path: Path) -> None:
    """With OTEL_TRACES_EXPORTER=console each call's span is printed (on stdout), the
    caller's traceparent its parent; the buffered spans are exported when the server stops."""
    port, trace_id, parent = free_port(), "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    spans = tmp_path / "spans.json"
    with spans.open("w") as out:
        serve = Running(
            ["serve", "--grpc-port", str(port), "--data-dir", str(tmp_path)],
            _env(COMMS_ENV="development", OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="c1"),
            stdout=out,
        )
        try:
            serve.wait_for("gRPC server listening")
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                metadata = [("traceparent", f"00-{trace_id}-{parent}-01")]
                assert _health(channel, metadata) == health_pb2.HealthCheckResponse.SERVING
        finally:
            assert serve.stop() == 0
    text = spans.read_text()
    assert '"name": "/grpc.health.v1.Health/Check"' in text, text
    assert f'"trace_id": "0x{trace_id}"' in text and f'"parent_id": "0x{parent}"' in text
    assert '"service.name": "c1"' in text
