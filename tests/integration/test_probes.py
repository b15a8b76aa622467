"""GET /healthz and GET /readyz through a real Envoy: no token, JSON, and readiness that
follows the store and the server's grpc.health.v1 status."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from comms import db
from comms.server import create_server
from comms.v1 import health_pb2 as pb
from comms.v1 import health_pb2_grpc as pb_grpc
from tests.integration.conftest import Envoy, Stack, free_port, gateway_settings
from tests.tokens import Keys

ANONYMOUS = {"Authorization": None}
STORE_DOWN = {"error": "unavailable", "message": "the store is unavailable; retry later"}


@pytest.mark.parametrize(("path", "status"), [("/healthz", "alive"), ("/readyz", "ready")])
def test_a_probe_needs_no_token_and_answers_json(stack: Stack, path: str, status: str) -> None:
    before = stack.counts()
    answer = stack.envoy.request("GET", path, headers=ANONYMOUS)
    assert (answer.status, answer.headers["content-type"]) == (200, "application/json")
    assert answer.json() == {"status": status}
    assert stack.counts() == before
    # A bad token changes nothing: a probe never reads one.
    refused = stack.envoy.request("GET", path, headers={"Authorization": "Bearer nonsense"})
    assert (refused.status, refused.json()) == (200, {"status": status})


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_a_probe_takes_get_only(stack: Stack, path: str) -> None:
    answer = stack.envoy.request("POST", path, "{}", {"Content-Type": "application/json"})
    assert (answer.status, answer.headers["allow"]) == (405, "GET")
    assert answer.json() == {
        "error": "method_not_allowed",
        "message": f"method POST is not allowed on {path}; allowed: GET",
    }


@pytest.fixture
def storeless(tmp_path: Path, keys: Keys) -> Iterator[tuple[Any, Envoy]]:
    """A server whose store (PostgreSQL on a port nothing listens on) cannot be reached, and
    Envoy in front."""
    database = db.open_database(f"postgresql://root@127.0.0.1:{free_port()}/test")
    server = create_server("127.0.0.1:0", database, keys.verifier(), workers=2)
    envoy = Envoy.start(gateway_settings(tmp_path, server.port))
    yield server, envoy
    envoy.stop()
    server.stop(0)


def test_with_the_store_down_the_server_is_alive_but_not_ready(
    storeless: tuple[Any, Envoy],
) -> None:
    _, envoy = storeless
    alive = envoy.request("GET", "/healthz", headers=ANONYMOUS)
    assert (alive.status, alive.json()) == (200, {"status": "alive"})
    ready = envoy.request("GET", "/readyz", headers=ANONYMOUS)
    assert (ready.status, ready.json()) == (503, STORE_DOWN)


def test_a_draining_server_is_not_ready(storeless: tuple[Any, Envoy]) -> None:
    """The grpc.health.v1 status the gateway's health checks read, NOT_SERVING (as after
    SIGTERM), makes readiness UNAVAILABLE before the store is asked: over HTTP through Envoy
    and straight over gRPC; liveness still answers."""
    server, envoy = storeless
    server._health.enter_graceful_shutdown()  # what Server.stop does first
    ready = envoy.request("GET", "/readyz", headers=ANONYMOUS)
    assert (ready.status, ready.json()) == (
        503,
        {"error": "unavailable", "message": "the server is not serving"},
    )
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        probes = pb_grpc.HealthServiceStub(channel)
        assert probes.GetLiveness(pb.GetLivenessRequest(), timeout=5).status == "alive"
        with pytest.raises(grpc.RpcError) as caught:
            probes.GetReadiness(pb.GetReadinessRequest(), timeout=5)
    error: Any = caught.value
    assert (error.code(), error.details()) == (
        grpc.StatusCode.UNAVAILABLE,
        "the server is not serving",
    )
