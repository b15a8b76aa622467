"""Update mask rules: which fields an update replaces, and the create rules it applies to them."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from comms import editing
from comms.v1 import sequences_pb2 as pb
from comms.validation import FieldViolation

STEP = {"position": 0, "channel": "sms", "template_key": "k", "delay_minutes": 0}


def _update(body: dict[str, Any], mask: str | None = None) -> pb.UpdateSequenceRequest:
    request = pb.UpdateSequenceRequest()
    json_format.ParseDict(body, request.sequence)
    if mask is not None:
        request.update_mask.FromJsonString(mask)
    return request


@pytest.mark.parametrize(
    ("body", "mask", "paths"),
    [
        ({"name": "n"}, None, ["name"]),
        ({"name": ""}, None, ["name"]),  # sent, so replaced (and then refused)
        ({"description": None}, None, ["description"]),
        ({"description": "d", "steps": [STEP]}, None, ["description", "steps"]),
        ({"steps": []}, None, []),  # proto3 cannot tell [] from absent: the mask must say it
        ({"brand_id": "other", "status": "active", "etag": "e"}, None, []),  # not editable
        ({}, "steps", ["steps"]),
        ({"name": "n", "description": "d"}, "description", ["description"]),
        ({}, "name,name", ["name"]),
        ({}, "", []),
    ],
)
def test_paths_from_the_mask_or_the_body(
    body: dict[str, Any], mask: str | None, paths: list[str]
) -> None:
    assert editing.paths(_update(body, mask)) == (paths, [])


@pytest.mark.parametrize(
    ("mask", "rule"),
    [
        ("status", "may name only name, description, steps, got 'status'"),
        ("name,brandId", "may name only name, description, steps, got 'brand_id'"),
        ("*", "may name only name, description, steps, got '*'"),
        ("steps.position", "may name only name, description, steps, got 'steps.position'"),
    ],
)
def test_other_mask_paths_are_refused_naming_update_mask(mask: str, rule: str) -> None:
    assert editing.paths(_update({}, mask)) == ([], [FieldViolation("update_mask", rule)])


@pytest.mark.parametrize(
    ("body", "paths", "found"),
    [
        ({"name": ""}, ["name"], [FieldViolation("name", "is required")]),
        ({}, ["name"], [FieldViolation("name", "is required")]),  # named, not sent: cleared
        (
            {"name": "n" * 256},
            ["name"],
            [FieldViolation("name", "must be at most 255 characters, got 256")],
        ),
        ({"name": ""}, ["steps"], []),  # not replaced, so not checked
        (
            {"description": 5},
            ["description"],
            [FieldViolation("description", "must be a string or null")],
        ),
        ({"description": None}, ["description"], []),
        (
            {"description": "d" * 10_001},
            ["description"],
            [FieldViolation("description", "must be at most 10000 characters, got 10001")],
        ),
        (
            {"steps": [STEP | {"channel": "CHANNEL_UNSPECIFIED"}]},
            ["steps"],
            [
                FieldViolation(
                    "steps[0].channel", "is required and must be one of email, sms, push, in_app"
                )
            ],
        ),
        (
            {"steps": [STEP, STEP]},
            ["steps"],
            [FieldViolation("steps", "positions must be unique within the sequence")],
        ),
        ({"steps": []}, ["steps"], []),  # clears the steps
        ({"name": "n", "steps": [STEP | {"template_key": ""}]}, ["name"], []),
    ],
)
def test_the_create_rules_of_the_replaced_fields(
    body: dict[str, Any], paths: list[str], found: list[FieldViolation]
) -> None:
    assert editing.violations(_update(body), paths) == found
