"""The document's schemas for POST /v1/sequences held to the seed's (the comms API reference
page for that operation; its three schemas are kept in tests/fixtures/seed_post_sequences.json):
each example gets the same verdict from both, except where CONTRACT.md, or the README's account
of the gateway, is more precise than the seed; such an example says why."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from comms import gateway
from tests.openapi_schema import body_pointer, response_pointer, validator
from tests.requests import valid_body, with_value, without

SEED_FILE = Path(__file__).resolve().parents[1] / "fixtures" / "seed_post_sequences.json"
DOC: dict[str, Any] = json.loads(gateway.openapi_path().read_text())
PATH, METHOD = "/v1/sequences", "post"


def _seed_schemas() -> dict[str, Any]:
    """Each JSON schema of the seed page, by the heading above it on that page."""
    seed = json.loads(SEED_FILE.read_text())
    assert seed["operation"] == f"{METHOD.upper()} {PATH}"
    schemas: dict[str, Any] = seed["schemas"]
    return schemas


SEED = _seed_schemas()


def _seed(heading_prefix: str) -> Any:
    (schema,) = [s for heading, s in SEED.items() if heading.startswith(heading_prefix)]
    return jsonschema.Draft202012Validator(schema)


@dataclass(frozen=True)
class Example:
    value: Any
    seed: bool  # the seed's verdict: valid or not
    ours: bool | None = None  # the document's, when it differs
    why: str = ""  # where the contract is more precise than the seed

    @property
    def expected(self) -> bool:
        return self.seed if self.ours is None else self.ours


def _steps(count: int) -> list[dict[str, Any]]:
    step = valid_body()["steps"][0]
    return [step | {"position": i} for i in range(count)]


NUL_NAME = with_value("name", "a\x00b")
REQUESTS = {
    "the valid body": Example(valid_body(), True),
    "no description, no steps": Example({"brand_id": "b", "name": "n", "steps": []}, True),
    "empty description": Example(with_value("description", ""), True),
    "unknown fields": Example(valid_body() | {"colour": "blue", "status": "live"}, True),
    "strings at their limit": Example(
        with_value("name", "n" * 255) | {"description": "d" * 10_000}, True
    ),
    "numbers at their limit": Example(with_value("steps.0.position", 2**31 - 1), True),
    "100 steps": Example(with_value("steps", _steps(100)), True),
    "brand_id missing": Example(without("brand_id"), False),
    "steps missing": Example(without("steps"), False),
    "name empty": Example(with_value("name", ""), False),
    "name a number": Example(with_value("name", 5), False),
    "steps an object": Example(with_value("steps", {}), False),
    "step not an object": Example(with_value("steps", [1]), False),
    "position negative": Example(with_value("steps.1.position", -1), False),
    "position a fraction": Example(with_value("steps.1.position", 1.5), False),
    "delay missing": Example(without("steps.2.delay_minutes"), False),
    "channel unknown": Example(with_value("steps.0.channel", "fax"), False),
    "channel in capitals": Example(with_value("steps.0.channel", "EMAIL"), False),
    "template_key empty": Example(with_value("steps.0.template_key", ""), False),
    "body not an object": Example([], False),
    "name too long": Example(
        with_value("name", "n" * 256), True, False, "CONTRACT: 255 characters for names"
    ),
    "template_key too long": Example(
        with_value("steps.0.template_key", "k" * 256), True, False, "CONTRACT: 255 for keys"
    ),
    "description too long": Example(
        with_value("description", "d" * 10_001), True, False, "CONTRACT: 10,000 for a description"
    ),
    "position above int32": Example(
        with_value("steps.0.position", 2**31), True, False, "CONTRACT: 0 to 2147483647"
    ),
    "delay above int32": Example(
        with_value("steps.0.delay_minutes", 2**31), True, False, "CONTRACT: 0 to 2147483647"
    ),
    "101 steps": Example(
        with_value("steps", _steps(101)),
        True,
        False,
        "CONTRACT: limits written in the README (100 steps)",
    ),
    "positions repeated": Example(
        with_value("steps.2.position", 1),
        True,
        False,
        "CONTRACT: positions unique within the sequence",
    ),
    "NUL in a string": Example(NUL_NAME, True, False, "README limits: no NUL character"),
    "empty key": Example(valid_body() | {"": 1}, True),  # ignored, like any unknown field
    "step id not a string": Example(
        with_value("steps.0.id", {}), True, False, "README: output-only fields keep their type"
    ),
    "request_id not ASCII": Example(
        valid_body() | {"request_id": "é"}, True, False, "README: keys are printable ASCII"
    ),
    "description null": Example(
        with_value("description", None), False, True, "README: null means no description"
    ),
}

CREATED = {
    "id": "01a220a3-7b38-781c-86d0-a6acf97fec34",
    "brand_id": "brand_123",
    "name": "Welcome series",
    "description": None,
    "status": "draft",
    "created_at": "2026-11-28T05:31:54.552131Z",
    "updated_at": "2026-11-28T05:31:54.552131Z",
    "steps": [
        {
            "id": "01a220a3-7b38-7f00-8133-d4591b3f299e",
            "sequence_id": "01a220a3-7b38-781c-86d0-a6acf97fec34",
            "position": 0,
            "channel": "email",
            "template_key": "welcome",
            "delay_minutes": 0,
        }
    ],
    # CONTRACT (Lifecycle and editing): every sequence answer also carries these three.
    "etag": "5f0c6e1d2b3a49587a6b5c4d3e2f1a0b",
    "revision": 0,
    "deleted_at": None,
}


def _created(**changes: Any) -> dict[str, Any]:
    return {k: v for k, v in (CREATED | changes).items() if v != "<absent>"}


def _created_step(**changes: Any) -> dict[str, Any]:
    step = {k: v for k, v in (CREATED["steps"][0] | changes).items() if v != "<absent>"}
    return CREATED | {"steps": [step]}


RESPONSES_201 = {
    "the README's answer": Example(CREATED, True),
    "a description": Example(_created(description="Greets"), True),
    "no steps": Example(_created(steps=[]), True),
    "description missing": Example(_created(description="<absent>"), False),
    "steps missing": Example(_created(steps="<absent>"), False),
    "sequence_id missing": Example(_created_step(sequence_id="<absent>"), False),
    "position a string": Example(_created_step(position="0"), False),
    # One Sequence schema serves every method, and other methods answer other statuses.
    "status active": Example(_created(status="active"), True),
    "etag missing": Example(
        _created(etag="<absent>"), True, False, "CONTRACT: etag is always present"
    ),
    "deleted_at missing": Example(
        _created(deleted_at="<absent>"), True, False, "CONTRACT: deleted_at is always present"
    ),
    "revision a string": Example(
        _created(revision="0"), True, False, "CONTRACT: revision is a JSON number"
    ),
    "channel unknown": Example(
        _created_step(channel="fax"), True, False, "CONTRACT: the word that was sent"
    ),
    "position a fraction": Example(_created_step(position=0.5), True, False, "CONTRACT: integers"),
}

RESPONSES_422 = {
    "a validation error": Example({"error": "validation_error", "message": "name: ..."}, True),
    "a reused key": Example({"error": "idempotency_key_reused", "message": "..."}, True),
    "message missing": Example({"error": "validation_error"}, False),
    "error missing": Example({"message": "name: ..."}, False),
    "error not a string": Example({"error": 422, "message": "..."}, False),
    "another code": Example(
        {"error": "bad_request", "message": "..."}, True, False, "CONTRACT: 422 is validation_error"
    ),
}

CASES = [
    (_seed("Request body"), validator(DOC, body_pointer(PATH, METHOD)), REQUESTS),
    (_seed("201"), validator(DOC, response_pointer(DOC, PATH, METHOD, 201)), RESPONSES_201),
    (_seed("422"), validator(DOC, response_pointer(DOC, PATH, METHOD, 422)), RESPONSES_422),
]
PARAMS = [
    pytest.param(seed, ours, example, id=f"{kind}: {name}")
    for (seed, ours, examples), kind in zip(CASES, ["request", "201", "422"], strict=True)
    for name, example in examples.items()
]


def test_the_seed_page_has_the_three_schemas() -> None:
    assert list(SEED) == ["Request body", "201 Sequence created", "422 Validation error"]


@pytest.mark.parametrize(("seed", "ours", "example"), PARAMS)
def test_same_verdict_as_the_seed_unless_the_contract_is_more_precise(
    seed: Any, ours: Any, example: Example
) -> None:
    assert seed.is_valid(example.value) is example.seed
    assert ours.is_valid(example.value) is example.expected
    assert bool(example.why) == (example.expected != example.seed)
