"""With the gRPC server down, the gateway answers fast: JSON 503 over HTTP, UNAVAILABLE over gRPC."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from comms.v1 import sequences_pb2 as pb
from comms.v1 import sequences_pb2_grpc as pb_grpc
from tests.integration.conftest import Envoy, free_port, gateway_settings
from tests.requests import valid_body


@pytest.fixture(scope="module")
def lonely_envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envoy]:
    """An Envoy whose upstream port has nothing listening."""
    envoy = Envoy.start(gateway_settings(tmp_path_factory.mktemp("envoy"), free_port()))
    yield envoy
    envoy.stop()


def test_http_gets_a_json_503(lonely_envoy: Envoy) -> None:
    started = time.monotonic()
    response = lonely_envoy.post(valid_body())
    assert time.monotonic() - started < 2
    assert response.status == 503
    assert response.json() == {
        "error": "unavailable",
        "message": "the comms service is unavailable, try again later",
    }


def test_grpc_gets_unavailable(lonely_envoy: Envoy) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{lonely_envoy.settings.http_port}") as channel:
        stub = pb_grpc.SequenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateSequence(pb.CreateSequenceRequest(brand_id="b"), timeout=5)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE


class _Cancels(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Answers every call CANCELLED, as grpc does to calls that reach a server just as it
    begins a graceful stop (seen under load: tests/integration/test_faults.py)."""

    def service(self, details: Any) -> Any:
        def cancel(request: bytes, context: grpc.ServicerContext) -> bytes:
            context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
            raise AssertionError("abort returns only by raising")

        return grpc.unary_unary_rpc_method_handler(cancel)


@pytest.fixture
def cancelling_upstream(tmp_path: Path) -> Iterator[Envoy]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([_Cancels()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    envoy = Envoy.start(gateway_settings(tmp_path, port))
    yield envoy
    envoy.stop()
    server.stop(None)


def test_a_call_the_server_drops_is_unavailable_not_internal(cancelling_upstream: Envoy) -> None:
    """Regression: a create reaching the server as it began a graceful stop was answered
    500 internal (HTTP) or CANCELLED (gRPC through Envoy); it never ran: retry later."""
    response = cancelling_upstream.post(valid_body())
    assert response.status == 503
    assert response.json() == {
        "error": "unavailable",
        "message": "the comms service is unavailable, try again later",
    }
    target = f"127.0.0.1:{cancelling_upstream.settings.http_port}"
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.SequenceServiceStub(channel).CreateSequence(pb.CreateSequenceRequest(), timeout=5)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "the comms service is unavailable, try again later"
