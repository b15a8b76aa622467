"""Each rule of CONTRACT.md, broken one field at a time on an otherwise valid request: the
proto's buf.validate rules as protovalidate checks them and comms.validation words them."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from comms.v1 import sequences_pb2 as pb
from comms.validation import FieldViolation, idempotency_key_violations, violations
from tests.requests import valid_body, with_value, without

CHANNEL_RULE = "is required and must be one of email, sms, push, in_app"
REQUIRED_TEXT = "is required"


def create_sequence_violations(request: pb.CreateSequenceRequest) -> list[FieldViolation]:
    return violations(request)


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
        [("brand_id", "must not contain U+0000")],
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
        [("steps", "must have at most 100 items, got 101")],
    ),
    "position missing": (
        without("steps.1.position"),
        [("steps[1].position", "is required")],
    ),
    "position negative": (
        with_value("steps.1.position", -1),
        [("steps[1].position", "must be at least 0, got -1")],
    ),
    "position repeated": (
        with_value("steps.2.position", 0),
        [("steps", "positions must be unique within the sequence")],
    ),
    "channel missing": (without("steps.2.channel"), [("steps[2].channel", CHANNEL_RULE)]),
    "channel unspecified": (
        with_value("steps.2.channel", "CHANNEL_UNSPECIFIED"),
        [("steps[2].channel", CHANNEL_RULE)],
    ),
    "channel number unknown to the enum": (
        with_value("steps.2.channel", 9),
        [("steps[2].channel", "must be one of email, sms, push, in_app, got 9")],
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
        [("steps[0].delay_minutes", "is required")],
    ),
    "position repeated twice over": (
        with_value(
            "steps",
            [{"position": 7, "channel": "sms", "template_key": "k", "delay_minutes": 0}] * 4,
        ),
        [("steps", "positions must be unique within the sequence")],
    ),
    "positions missing twice are not repeated ones": (
        with_value("steps", [{"channel": "sms", "template_key": "k", "delay_minutes": 0}] * 2),
        [("steps[0].position", "is required"), ("steps[1].position", "is required")],
    ),
    "NUL in a step's template_key": (
        with_value("steps.1.template_key", "\x00"),
        [("steps[1].template_key", "must not contain U+0000")],
    ),
    "NUL in the description": (
        with_value("description", "a\x00"),
        [("description", "must not contain U+0000")],
    ),
    "request_id too long": (
        with_value("request_id", "r" * 256),
        [("request_id", "must be at most 255 characters, got 256")],
    ),
    "request_id not printable ASCII": (
        with_value("request_id", "caf\u00e9"),
        [("request_id", "must match the regular expression ^[ -~]*$")],
    ),
    "delay negative": (
        with_value("steps.0.delay_minutes", -5),
        [("steps[0].delay_minutes", "must be at least 0, got -5")],
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
        FieldViolation("steps[0].position", "must be at least 0, got -1"),
        FieldViolation("steps[0].template_key", REQUIRED_TEXT),
        FieldViolation("steps[0].delay_minutes", REQUIRED_TEXT),
        FieldViolation("steps[1].channel", CHANNEL_RULE),
        FieldViolation("steps[1].template_key", REQUIRED_TEXT),
        FieldViolation("steps[1].delay_minutes", REQUIRED_TEXT),
    ]


@pytest.mark.parametrize("count", [101, 50_000])
def test_an_oversized_list_is_reported_alone(count: int) -> None:
    """Its steps are not checked: 50,000 (a 1 MiB body) would take long, or fail."""
    body = with_value("steps", [{"position": 1}] * count)
    body["name"] = ""
    assert _violations(body) == [
        ("name", REQUIRED_TEXT),
        ("steps", f"must have at most 100 items, got {count}"),
    ]


def test_the_idempotency_key_header_is_checked_by_request_ids_rules() -> None:
    assert idempotency_key_violations("Idempotency-Key", "k" * 255) == []
    assert idempotency_key_violations("Idempotency-Key", "k\x7f" * 200) == [
        FieldViolation("Idempotency-Key", "must be at most 255 characters, got 400"),
        FieldViolation("Idempotency-Key", "must match the regular expression ^[ -~]*$"),
    ]


LIST_REFUSED = {
    "brand_id missing": ({}, [("brand_id", REQUIRED_TEXT)]),
    "negative page size": (
        {"brand_id": "b", "page_size": -1},
        [("page_size", "must be at least 0, got -1")],
    ),
    "NUL in the page token": (
        {"brand_id": "b", "page_token": "\x00"},
        [("page_token", "must not contain U+0000")],
    ),
}


@pytest.mark.parametrize(("query", "expected"), LIST_REFUSED.values(), ids=LIST_REFUSED.keys())
def test_list_refused(query: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    request = pb.ListSequencesRequest(**query)
    assert [(v.field, v.description) for v in violations(request)] == expected


def test_a_message_rule_without_a_field_reads_as_its_description() -> None:
    assert str(FieldViolation("", "is invalid")) == "is invalid"
