"""With the gRPC server down, the gateway answers fast: JSON 503 over HTTP, UNAVAILABLE over gRPC."""

from __future__ import annotations

import time
from collections.abc import Iterator
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
