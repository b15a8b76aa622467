"""Every HTTP rule of CONTRACT.md, through the real Envoy, on each store."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest

from tests.conftest import SEQUENCE_KEYS
from tests.integration.conftest import Response, Stack
from tests.requests import valid_body, with_value, without

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3,9})?Z$")


def _error(response: Response) -> dict[str, Any]:
    body = response.json()
    assert list(body) == ["error", "message"], body
    return body  # type: ignore[no-any-return]


def _refused(stack: Stack, payload: Any, status: int = 422, **send: Any) -> dict[str, Any]:
    """Send payload as JSON (or send= a raw request), expect a JSON error with this status,
    and check that nothing was stored."""
    before = stack.counts()
    response = (
        stack.envoy.request("POST", "/v1/sequences", **send) if send else stack.envoy.post(payload)
    )
    assert response.status == status, (response.status, response.body)
    assert stack.counts() == before
    return _error(response)


def test_create_answers_201_with_the_stored_sequence(stack: Stack) -> None:
    before = stack.counts()
    response = stack.envoy.post(valid_body())

    assert response.status == 201
    assert response.headers["content-type"] == "application/json"
    assert "x-http-code" not in response.headers
    body = response.json()
    assert list(body) == SEQUENCE_KEYS
    assert UUID.match(body["id"])
    assert RFC3339_UTC.match(body["created_at"])
    assert body["created_at"] == body["updated_at"]
    step_ids = [step.pop("id") for step in body["steps"]]
    assert all(UUID.match(i) for i in step_ids) and len(set(step_ids)) == 3
    etag = body.pop("etag")
    assert isinstance(etag, str) and etag
    assert {k: v for k, v in body.items() if k not in ("id", "created_at", "updated_at")} == {
        "brand_id": "brand_123",
        "revision": 0,
        "deleted_at": None,
        "name": "Welcome series",
        "description": "Greets new members",
        "status": "draft",
        "steps": [
            {
                "sequence_id": body["id"],
                "position": 0,
                "channel": "email",
                "template_key": "welcome",
                "delay_minutes": 0,
            },
            {
                "sequence_id": body["id"],
                "position": 1,
                "channel": "sms",
                "template_key": "nudge",
                "delay_minutes": 1440,
            },
            {
                "sequence_id": body["id"],
                "position": 5,
                "channel": "in_app",
                "template_key": "tips",
                "delay_minutes": 2880,
            },
        ],
    }

    assert stack.counts() == (before[0] + 1, before[1] + 3)
    row, steps = stack.stored(body["id"])
    created = dt.datetime.fromisoformat(body["created_at"]).replace(tzinfo=None)
    assert (row["brand_id"], row["name"], row["description"], row["status"]) == (
        "brand_123",
        "Welcome series",
        "Greets new members",
        "draft",
    )
    assert row["created_at"] == row["updated_at"] == created
    assert (row["etag"], row["revision"], row["deleted_at"]) == (etag, 0, None)
    assert [(str(s["id"]), s["position"], s["channel"]) for s in steps] == [
        (step_ids[0], 0, "email"),
        (step_ids[1], 1, "sms"),
        (step_ids[2], 5, "in_app"),
    ]


def test_steps_come_back_ordered_by_position(stack: Stack) -> None:
    body = valid_body()
    body["steps"].reverse()
    answer = stack.envoy.post(body).json()
    assert [s["position"] for s in answer["steps"]] == [0, 1, 5]
    assert [s["channel"] for s in answer["steps"]] == ["email", "sms", "in_app"]


@pytest.mark.parametrize(
    ("description", "printed", "stored"),
    [("absent", None, None), (None, None, None), ("", "", ""), ("x", "x", "x")],
    ids=["absent", "null", "empty", "text"],
)
def test_description_is_a_string_or_null(
    stack: Stack, description: str | None, printed: str | None, stored: str | None
) -> None:
    body = valid_body()
    if description == "absent":
        del body["description"]
    else:
        body["description"] = description
    response = stack.envoy.post(body)
    assert response.status == 201
    answer = response.json()
    assert "description" in answer and answer["description"] == printed
    assert stack.stored(answer["id"])[0]["description"] == stored


def test_empty_steps_are_kept(stack: Stack) -> None:
    response = stack.envoy.post(valid_body() | {"steps": []})
    assert response.status == 201
    answer = response.json()
    assert answer["steps"] == []
    assert stack.stored(answer["id"])[1] == []


def test_unknown_fields_are_ignored(stack: Stack) -> None:
    body = valid_body() | {"colour": "blue", "id": "mine", "status": "active"}
    body["steps"][0] |= {"extra": [1, 2], "id": "mine-too"}
    response = stack.envoy.post(body)
    assert response.status == 201
    answer = response.json()
    assert answer["status"] == "draft"
    assert answer["id"] != "mine" and answer["steps"][0]["id"] != "mine-too"
    assert "colour" not in answer


EMPTY_KEY_VALUES = {
    "string": '"x"',
    "number": "-1.5e3",
    "object": '{"name": "other", "steps": [], "": 1}',
    "array": '[1, {"": 2}, [null]]',
    "null": "null",
}


@pytest.mark.parametrize("value", EMPTY_KEY_VALUES.values(), ids=EMPTY_KEY_VALUES)
def test_empty_field_names_are_ignored(stack: Stack, value: str) -> None:
    """Found by make fuzz: the transcoder read a member named "" as the object itself (its
    value overwrote the fields), so the gateway drops such members before it, wherever they
    stand: first, last, several in a row, at the top level and in a step."""
    raw = json.dumps(valid_body())
    member = f'"": {value}'
    raw = raw.replace(', "steps"', f', {member},{member} , "steps"', 1)
    raw = raw.replace('{"brand_id"', f'{{{member}, "brand_id"', 1)
    raw = raw.replace('{"position": 0', f'{{ {member} ,{member}, "position": 0', 1)
    raw = raw.replace('"delay_minutes": 1440}', f'"delay_minutes": 1440, {member}}}', 1)
    raw = raw[:-1] + f", {member},{member}}}"
    assert raw.count(member) == 8
    before = stack.counts()
    response = stack.envoy.request(
        "POST", "/v1/sequences", raw, {"Content-Type": "application/json"}
    )
    assert response.status == 201, response.body
    assert stack.counts() == (before[0] + 1, before[1] + 3)
    row, steps = stack.stored(response.json()["id"])
    assert (row["brand_id"], row["name"], row["description"]) == (
        "brand_123",
        "Welcome series",
        "Greets new members",
    )
    expected = [{k: s[k] for k in ("position", "template_key")} for s in valid_body()["steps"]]
    assert [{k: s[k] for k in ("position", "template_key")} for s in steps] == expected


def test_protobuf_json_leniency_is_accepted(stack: Stack) -> None:
    """What protobuf's JSON mapping reads beyond the contract (documented in the README)."""
    body = {
        "brandId": "b",
        "name": "n",
        "steps": [{"position": "3", "channel": 2, "templateKey": "k", "delayMinutes": 0}],
    }
    response = stack.envoy.post(body)
    assert response.status == 201
    answer = response.json()
    assert answer["brand_id"] == "b"
    assert answer["steps"][0] | {"id": "", "sequence_id": ""} == {
        "id": "",
        "sequence_id": "",
        "position": 3,
        "channel": "sms",
        "template_key": "k",
        "delay_minutes": 0,
    }


def test_null_reads_as_absent_for_optional_fields(stack: Stack) -> None:
    """The OpenAPI document allows null wherever a field is optional."""
    body = valid_body() | {"description": None, "request_id": None}
    body["steps"][0] |= {"id": None, "sequence_id": None}
    response = stack.envoy.post(body)
    assert response.status == 201
    assert response.json()["description"] is None


# Refusals decided by the server: the message is exactly the server's.
SERVER_REFUSALS = {
    "brand_id missing": (
        without("brand_id"),
        "brand_id: is required",
    ),
    "name empty": (with_value("name", ""), "name: is required"),
    "name too long": (
        with_value("name", "n" * 256),
        "name: must be at most 255 characters, got 256",
    ),
    "position negative": (
        with_value("steps.1.position", -1),
        "steps[1].position: must be at least 0, got -1",
    ),
    "position missing": (
        without("steps.2.position"),
        "steps[2].position: is required",
    ),
    "position repeated": (
        with_value("steps.2.position", 1),
        "steps: positions must be unique within the sequence",
    ),
    "channel missing": (
        without("steps.0.channel"),
        "steps[0].channel: is required and must be one of email, sms, push, in_app",
    ),
    "template_key empty": (
        with_value("steps.0.template_key", ""),
        "steps[0].template_key: is required",
    ),
    "delay missing": (
        without("steps.0.delay_minutes"),
        "steps[0].delay_minutes: is required",
    ),
    "several at once": (
        {"brand_id": "", "name": "n", "steps": [{"position": 0, "channel": "push"}]},
        "brand_id: is required; "
        "steps[0].template_key: is required; "
        "steps[0].delay_minutes: is required",
    ),
    # 50,000 steps fit in the 1 MiB body; checking each (CEL included) would take long, or
    # exceed protovalidate's budget (a 500): the list's size is the one answer.
    "a longest body of steps": (
        with_value("steps", [{"position": 1}] * 50_000),
        "steps: must have at most 100 items, got 50000",
    ),
    "NUL in a step's template_key": (
        with_value("steps.2.template_key", "a\x00b"),
        "steps[2].template_key: must not contain U+0000",
    ),
    "request_id with a control character": (
        with_value("request_id", "key\x7f"),
        "request_id: must match the regular expression ^[ -~]*$",
    ),
    "quotes and unicode in the message": (
        with_value("name", 'é"\\' * 100),
        "name: must be at most 255 characters, got 300",
    ),
}


@pytest.mark.parametrize(
    ("payload", "message"), SERVER_REFUSALS.values(), ids=SERVER_REFUSALS.keys()
)
def test_server_refusals_are_422_naming_the_field(stack: Stack, payload: Any, message: str) -> None:
    assert _refused(stack, payload) == {"error": "validation_error", "message": message}


# Refusals decided by the gateway (Lua or the transcoder) before the server is called.
GATEWAY_REFUSALS = {
    "steps missing": (json.dumps(without("steps")), "steps: is required"),
    "steps null": (json.dumps(with_value("steps", None)), "steps: is required"),
    "steps an object": (json.dumps(with_value("steps", {})), "steps: must be an array"),
    "steps only nested": (
        json.dumps(without("steps") | {"x": {"steps": []}, "y": '"steps": []'}),
        "steps: is required",
    ),
    "empty body": ("", "body: must be a JSON object"),
    "top-level array": ("[]", "body: must be a JSON object"),
    "top-level string": ('"x"', "body: must be a JSON object"),
    "cut short": (
        '{"brand_id": "b",',
        "body: malformed JSON: Unexpected end of string. Expected an object key or }.",
    ),
    "single quotes": ("{'brand_id': 'b', 'name': 'n', 'steps': []}", "body: malformed JSON"),
    "trailing garbage": (
        json.dumps(valid_body()) + " x",
        "body: malformed JSON: Parsing terminated before end of input.",
    ),
    "string given a number": (json.dumps(with_value("name", 5)), "name: must be a string (got 5)"),
    # The transcoder's own message names no field for these (the gateway does).
    "string given a list": (
        json.dumps(with_value("name", ["x"])),
        "name: must be a string (got a list)",
    ),
    "alias given a list": (
        json.dumps(without("brand_id") | {"brandId": []}),
        "brand_id: must be a string (got a list)",
    ),
    "description given a list": (
        json.dumps(with_value("description", [["d"]])),
        "description: must be a string (got a list)",
    ),
    "request_id given a list": (
        json.dumps(with_value("request_id", [1])),
        "request_id: must be a string (got a list)",
    ),
    "template_key given a list": (
        json.dumps(with_value("steps.0.template_key", ["k"])),
        "steps[0].template_key: must be a string (got a list)",
    ),
    "position given a list": (
        json.dumps(with_value("steps.1.position", [1])),
        "steps[1].position: must be an integer from 0 to 2147483647 (got a list)",
    ),
    "channel given a list": (
        json.dumps(with_value("steps.2.channel", ["sms"])),
        "steps[2].channel: must be one of email, sms, push, in_app (got a list)",
    ),
    "delay alias given a list": (
        json.dumps(with_value("steps.2.delayMinutes", [])),
        "steps[2].delay_minutes: must be an integer from 0 to 2147483647 (got a list)",
    ),
    "output-only step id given a list": (
        json.dumps(with_value("steps.0.sequence_id", [])),
        "steps[0].sequence_id: must be a string (got a list)",
    ),
    "string given an object": (json.dumps(with_value("name", {})), "name: must not be an object"),
    "position not a number": (
        json.dumps(with_value("steps.0.position", "x")),
        'steps[0].position: must be an integer from 0 to 2147483647 (got "x")',
    ),
    "position above int32": (
        json.dumps(with_value("steps.1.position", 2**31)),
        "steps[1].position: must be an integer from 0 to 2147483647 (got 2147483648)",
    ),
    "delay above int32": (
        json.dumps(with_value("steps.2.delay_minutes", 2**31)),
        "steps[2].delay_minutes: must be an integer from 0 to 2147483647 (got 2147483648)",
    ),
    "unknown channel": (
        json.dumps(with_value("steps.0.channel", "fax")),
        'steps[0].channel: must be one of email, sms, push, in_app (got "fax")',
    ),
    "channel in capitals": (
        json.dumps(with_value("steps.0.channel", "EMAIL")),
        'steps[0].channel: must be one of email, sms, push, in_app (got "EMAIL")',
    ),
    "step not an object": (
        json.dumps(with_value("steps", [1])),
        "steps[0]: must be an object (got 1)",
    ),
    # Found by make fuzz: the transcoder skipped a null step and flattened a nested list.
    "step null": (
        json.dumps(with_value("steps", [valid_body()["steps"][0], None])),
        "steps[1]: must be an object (got null)",
    ),
    "step a list": (
        json.dumps(with_value("steps", [valid_body()["steps"]])),
        "steps[0]: must be an object (got a list)",
    ),
    "empty key after a missing comma": (
        '{"name": "n" "": 1, "steps": []}',
        "body: malformed JSON: Expected , or } after key:value pair.",
    ),
    "empty key before a missing comma": (
        '{"name": "n", "": 1 "steps": []}',
        "body: malformed JSON: Expected , or } after key:value pair.",
    ),
    # An empty name is ignored, like any unknown field: this step is then empty.
    "step with only an empty key": (
        json.dumps(with_value("steps", [{"": {"position": 9}}])),
        "steps[0].position: is required; "
        "steps[0].channel: is required and must be one of email, sms, push, in_app; "
        "steps[0].template_key: is required; "
        "steps[0].delay_minutes: is required",
    ),
    # Found by make fuzz: output-only fields are ignored, but parsed with their type.
    "output-only step id not a string": (
        json.dumps(with_value("steps.0.id", {})),
        "steps[0].id: must not be an object",
    ),
}


@pytest.mark.parametrize(("raw", "message"), GATEWAY_REFUSALS.values(), ids=GATEWAY_REFUSALS.keys())
def test_gateway_refusals_are_422_naming_the_field(stack: Stack, raw: str, message: str) -> None:
    headers = {"Content-Type": "application/json"}
    assert _refused(stack, None, body=raw, headers=headers) == {
        "error": "validation_error",
        "message": message,
    }


def test_body_over_the_limit_is_413(stack: Stack) -> None:
    big = json.dumps(with_value("description", "d" * (1024 * 1024)))
    assert _refused(stack, None, 413, body=big, headers={"Content-Type": "application/json"}) == {
        "error": "payload_too_large",
        "message": "request body is larger than 1048576 bytes",
    }


def test_largest_valid_request_fits_under_the_limit(stack: Stack) -> None:
    """Every string at its limit, written as \\u escapes: still under the body limit."""
    escaped = "\\u00e9"
    steps = ",".join(
        f'{{"position":{i},"channel":"email","template_key":"{escaped * 255}","delay_minutes":0}}'
        for i in range(100)
    )
    raw = (
        f'{{"brand_id":"{escaped * 255}","name":"{escaped * 255}",'
        f'"description":"{escaped * 10_000}","steps":[{steps}]}}'
    )
    assert len(raw) < 1024 * 1024
    response = stack.envoy.request(
        "POST", "/v1/sequences", raw, {"Content-Type": "application/json"}
    )
    assert response.status == 201, response.body[:300]
    assert response.json()["description"] == "é" * 10_000


@pytest.mark.parametrize(
    "path", ["/", "/nope", "/v1/sequences/", "/v1/sequence", "/v2/sequences", "/v1/sequences/a/b"]
)
def test_unknown_path_is_404(stack: Stack, path: str) -> None:
    response = stack.envoy.request("GET", path)
    assert response.status == 404
    assert _error(response) == {"error": "not_found", "message": f"no route for GET {path}"}


ITEM = "/v1/sequences/01a220a3-7b38-781c-86d0-a6acf97fec34"


@pytest.mark.parametrize(
    ("path", "method", "allowed"),
    [
        *[
            ("/v1/sequences", method, "GET, POST")
            for method in ("PUT", "PATCH", "DELETE", "OPTIONS")
        ],
        *[(ITEM, method, "DELETE, GET, PATCH") for method in ("PUT", "POST", "OPTIONS")],
        (f"{ITEM}:activate", "GET", "POST"),
        (f"{ITEM}/revisions", "POST", "GET"),
    ],
)
def test_other_methods_are_405(stack: Stack, method: str, path: str, allowed: str) -> None:
    before = stack.counts()
    response = stack.envoy.request(method, path, json.dumps(valid_body()))
    assert response.status == 405
    assert response.headers["allow"] == allowed
    assert _error(response) == {
        "error": "method_not_allowed",
        "message": f"method {method} is not allowed on {path}; allowed: {allowed}",
    }
    assert stack.counts() == before


def test_query_without_content_type_is_400_saying_why(stack: Stack) -> None:
    """Found by make fuzz: Envoy refuses it before routing, and its reply had no message."""
    response = stack.envoy.request("QUERY", "/v1/sequences")
    assert response.status == 400
    assert _error(response) == {
        "error": "bad_request",
        "message": "malformed request: query_missing_content_type",
    }


def test_head_is_405_without_a_body(stack: Stack) -> None:
    response = stack.envoy.request("HEAD", "/v1/sequences")
    assert (response.status, response.headers["allow"], response.body) == (405, "GET, POST", b"")


def test_query_parameters_do_not_change_the_body(stack: Stack) -> None:
    response = stack.envoy.request(
        "POST",
        "/v1/sequences?name=other&foo=bar",
        json.dumps(valid_body()),
        {"Content-Type": "application/json"},
    )
    assert response.status == 201
    assert response.json()["name"] == "Welcome series"
