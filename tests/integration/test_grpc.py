"""The gRPC contract, straight to the server and through Envoy's listener, on each store."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from comms.v1 import sequences_pb2 as pb
from comms.v1 import sequences_pb2_grpc as pb_grpc
from tests.integration.conftest import Stack
from tests.requests import valid_body

ROUTES = ["direct", "envoy"]


def _stub(stack: Stack, route: str) -> pb_grpc.SequenceServiceStub:
    target = stack.grpc_target if route == "direct" else stack.envoy_target
    return pb_grpc.SequenceServiceStub(stack.channel(target))


def _request(body: dict[str, Any]) -> pb.CreateSequenceRequest:
    return json_format.ParseDict(body, pb.CreateSequenceRequest())


@pytest.mark.parametrize("route", ROUTES)
def test_create_returns_the_stored_sequence(stack: Stack, route: str) -> None:
    before = stack.counts()
    sequence, call = _stub(stack, route).CreateSequence.with_call(
        _request(valid_body()), timeout=10
    )
    assert call.code() == grpc.StatusCode.OK
    assert sequence.status == pb.draft
    assert [(s.position, pb.Channel.Name(s.channel)) for s in sequence.steps] == [
        (0, "email"),
        (1, "sms"),
        (5, "in_app"),
    ]
    assert {s.sequence_id for s in sequence.steps} == {sequence.id}
    assert sequence.description.string_value == "Greets new members"
    assert stack.counts() == (before[0] + 1, before[1] + 3)
    row, steps = stack.stored(sequence.id)
    assert row["created_at"] == sequence.created_at.ToDatetime() == sequence.updated_at.ToDatetime()
    assert [str(s["id"]) for s in steps] == [s.id for s in sequence.steps]


@pytest.mark.parametrize("route", ROUTES)
def test_refusal_is_invalid_argument_with_bad_request_details(stack: Stack, route: str) -> None:
    body = valid_body()
    body["brand_id"] = ""
    body["steps"][2]["channel"] = "CHANNEL_UNSPECIFIED"
    before = stack.counts()
    with pytest.raises(grpc.RpcError) as caught:
        _stub(stack, route).CreateSequence(_request(body), timeout=10)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "brand_id: is required; "
        "steps[2].channel: is required and must be one of email, sms, push, in_app"
    )
    status = rpc_status.from_call(error)
    assert status is not None and len(status.details) == 1
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("brand_id", "is required"),
        ("steps[2].channel", "is required and must be one of email, sms, push, in_app"),
    ]
    assert stack.counts() == before


def test_violations_beyond_twenty_are_counted_not_listed(stack: Stack) -> None:
    steps = [pb.Step(position=i, channel=pb.sms, template_key="") for i in range(30)]
    request = pb.CreateSequenceRequest(brand_id="b", name="n", steps=steps)
    with pytest.raises(grpc.RpcError) as caught:
        _stub(stack, "direct").CreateSequence(request, timeout=10)
    error: Any = caught.value
    assert error.details().endswith("; and 40 more violations")
    status = rpc_status.from_call(error)
    bad_request = error_details_pb2.BadRequest()
    status.details[0].Unpack(bad_request)
    assert len(bad_request.field_violations) == 20


@pytest.mark.parametrize("route", ROUTES)
def test_health_answers_serving(stack: Stack, route: str) -> None:
    target = stack.grpc_target if route == "direct" else stack.envoy_target
    health = health_pb2_grpc.HealthStub(stack.channel(target))
    for service in ("", "comms.v1.SequenceService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
