"""The field named when a request's bytes do not parse."""

from __future__ import annotations

import pytest

from comms.unparsable import _violation
from comms.v1 import sequences_pb2 as pb


def _create_with(template_key: str, description: str = "d") -> bytes:
    request = pb.CreateSequenceRequest(
        brand_id="b", description=description, steps=[pb.Step(), pb.Step(template_key=template_key)]
    )
    return request.SerializeToString().replace("é".encode(), b"\xff")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\n\x01\xff", "id: must be valid UTF-8"),
        (b"\n\x05ab", "request: is not a valid serialized protobuf message"),  # cut short
        (b"\x0b", "request: is not a valid serialized protobuf message"),  # a group
    ],
)
def test_get_request(raw: bytes, message: str) -> None:
    assert str(_violation(raw, pb.GetSequenceRequest.DESCRIPTOR)) == message


def test_the_first_bad_field_is_named_by_its_path() -> None:
    raw = _create_with("é", description="é")
    assert str(_violation(raw, pb.CreateSequenceRequest.DESCRIPTOR)) == (
        "description: must be valid UTF-8"
    )
    raw = _create_with("é")
    assert str(_violation(raw, pb.CreateSequenceRequest.DESCRIPTOR)) == (
        "steps[1].template_key: must be valid UTF-8"
    )
