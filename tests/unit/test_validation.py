"""Each rule of CONTRACT.md, broken one field at a time on an otherwise valid request."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from comms.v1 import sequences_pb2 as pb
from comms.validation import FieldViolation, create_sequence_violations
from tests.requests import valid_body, with_value, without

INT32 = "an integer from 0 to 2147483647"
CHANNEL_RULE = "is required and must be one of email, sms, push, in_app"
REQUIRED_TEXT = "is required and must be a non-empty string"


def _request(body: dict[str, Any]) -> pb.CreateSequenceRequest:
    return json_format.ParseDict(body, pb.CreateSequenceRequest())


def _violations(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in create_sequence_violations(_request(body))]


def test_valid_request_has_no_violations() -> None:
    assert create_sequence_violations(_request(valid_body())) == []


ACCEPTED = {
    "no description": without("description"),
    "empty description kept": with_value("description", ""),
    "description at 10000": with_value("description", "d" * 10_000),
    "no steps": with_value("steps", []),
    "100 steps": with_value(
        "steps",
        [
            {"position": i, "channel": "push", "template_key": "k", "delay_minutes": 0}
            for i in range(100)
        ],
    ),
    "brand_id at 255": with_value("brand_id", "b" * 255),
    "255 non-ASCII characters": with_value("name", "é" * 255),
    "position at int32 max": with_value("steps.0.position", 2**31 - 1),
    "delay at int32 max": with_value("steps.0.delay_minutes", 2**31 - 1),
    "whitespace name is a character": with_value("name", " "),
}


@pytest.mark.parametrize("body", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted(body: dict[str, Any]) -> None:
    assert _violations(body) == []


REFUSED: dict[str, tuple[dict[str, Any], list[tuple[str, str]]]] = {
    "brand_id missing": (without("brand_id"), [("brand_id", REQUIRED_TEXT)]),
    "brand_id empty": (with_value("brand_id", ""), [("brand_id", REQUIRED_TEXT)]),
    "brand_id too long": (
        with_value("brand_id", "b" * 256),
        [("brand_id", "must be at most 255 characters, got 256")],
    ),
    "brand_id with NUL": (
        with_value("brand_id", "a\x00b"),
        [("brand_id", "must not contain the NUL character (U+0000)")],
    ),
    "name missing": (without("name"), [("name", REQUIRED_TEXT)]),
    "name too long": (
        with_value("name", "n" * 256),
        [("name", "must be at most 255 characters, got 256")],
    ),
    "description too long": (
        with_value("description", "d" * 10_001),
        [("description", "must be at most 10000 characters, got 10001")],
    ),
    "too many steps": (
        with_value(
            "steps",
            [
                {"position": i, "channel": "sms", "template_key": "k", "delay_minutes": 0}
                for i in range(101)
            ],
        ),
        [("steps", "must have at most 100 steps, got 101")],
    ),
    "position missing": (
        without("steps.1.position"),
        [("steps[1].position", f"is required and must be {INT32}")],
    ),
    "position negative": (
        with_value("steps.1.position", -1),
        [("steps[1].position", f"must be {INT32}, got -1")],
    ),
    "position repeated": (
        with_value("steps.2.position", 0),
        [
            (
                "steps[2].position",
                "must be unique within the sequence: 0 is already used by steps[0]",
            )
        ],
    ),
    "channel missing": (without("steps.2.channel"), [("steps[2].channel", CHANNEL_RULE)]),
    "channel unspecified": (
        with_value("steps.2.channel", "CHANNEL_UNSPECIFIED"),
        [("steps[2].channel", CHANNEL_RULE)],
    ),
    "channel number unknown to the enum": (
        with_value("steps.2.channel", 9),
        [("steps[2].channel", CHANNEL_RULE)],
    ),
    "template_key missing": (
        without("steps.0.template_key"),
        [("steps[0].template_key", REQUIRED_TEXT)],
    ),
    "template_key too long": (
        with_value("steps.0.template_key", "t" * 256),
        [("steps[0].template_key", "must be at most 255 characters, got 256")],
    ),
    "delay missing": (
        without("steps.0.delay_minutes"),
        [("steps[0].delay_minutes", f"is required and must be {INT32}")],
    ),
    "delay negative": (
        with_value("steps.0.delay_minutes", -5),
        [("steps[0].delay_minutes", f"must be {INT32}, got -5")],
    ),
}


@pytest.mark.parametrize(("body", "expected"), REFUSED.values(), ids=REFUSED.keys())
def test_refused(body: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert _violations(body) == expected


def test_every_violation_is_reported_in_field_order() -> None:
    body = {"name": "", "steps": [{"position": -1, "channel": "sms"}, {"position": 3}]}
    assert create_sequence_violations(_request(body)) == [
        FieldViolation("brand_id", REQUIRED_TEXT),
        FieldViolation("name", REQUIRED_TEXT),
        FieldViolation("steps[0].position", f"must be {INT32}, got -1"),
        FieldViolation("steps[0].template_key", REQUIRED_TEXT),
        FieldViolation("steps[0].delay_minutes", f"is required and must be {INT32}"),
        FieldViolation("steps[1].channel", CHANNEL_RULE),
        FieldViolation("steps[1].template_key", REQUIRED_TEXT),
        FieldViolation("steps[1].delay_minutes", f"is required and must be {INT32}"),
    ]
