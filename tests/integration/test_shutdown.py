"""SIGTERM lets in-flight creates finish and commit, refuses new ones, then exits 0."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from comms import devkeys
from comms.v1 import sequences_pb2 as pb
from comms.v1 import sequences_pb2_grpc as pb_grpc
from tests.integration.conftest import free_port

COMMS = str(Path(sys.executable).parent / "comms")


def _wait_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                return
        except grpc.RpcError:
            time.sleep(0.1)
    raise TimeoutError("comms serve did not start")


def test_sigterm_drains_in_flight_calls(tmp_path: Path) -> None:
    port = free_port()
    env = os.environ | {
        "COMMS_GRPC_PORT": str(port),
        "COMMS_DATA_DIR": str(tmp_path),
        "COMMS_ENV": "development",
        "COMMS_METRICS_PORT": "0",
    }
    for name in ("COMMS_DATABASE_URL", "COMMS_AUTH_JWKS_PATH"):
        env.pop(name, None)
    server = subprocess.Popen([COMMS, "serve"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            _wait_serving(channel)
            stub = pb_grpc.SequenceServiceStub(channel)
            # Hold SQLite's write lock so that the create is still in flight at SIGTERM.
            blocker = sqlite3.connect(tmp_path / "comms.db", isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            request = pb.CreateSequenceRequest(brand_id="b", name="in flight")
            bearer = (
                ("authorization", f"Bearer {devkeys.mint_token(tmp_path, ['sequences:write'])}"),
            )
            in_flight = stub.CreateSequence.future(request, timeout=20, metadata=bearer)
            time.sleep(0.5)
            server.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(grpc.RpcError) as refused:
                late_request = pb.CreateSequenceRequest(brand_id="b", name="late")
                stub.CreateSequence(late_request, timeout=5, metadata=bearer)
            late: Any = refused.value
            assert late.code() == grpc.StatusCode.UNAVAILABLE
            blocker.execute("ROLLBACK")
            blocker.close()
            assert in_flight.result().name == "in flight"
        assert server.wait(timeout=15) == 0
    finally:
        if server.poll() is None:
            server.kill()
        stderr = server.communicate()[1]
    assert "draining in-flight calls" in stderr
    stored = sqlite3.connect(tmp_path / "comms.db").execute("SELECT name FROM sequences").fetchall()
    assert stored == [("in flight",)]
