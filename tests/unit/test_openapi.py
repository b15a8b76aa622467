"""The OpenAPI document comms.openapi generates from the descriptor set."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from comms import gateway, openapi
from comms.v1 import health_pb2, options_pb2
from comms.v1 import sequences_pb2 as pb
from tests.conftest import SEQUENCE_KEYS
from tests.openapi_schema import Validator

ROOT = Path(__file__).parents[2]
DOC: dict[str, Any] = json.loads(gateway.openapi_path().read_text())
SCHEMAS: dict[str, Any] = DOC["components"]["schemas"]
NO_NUL = "^[^\\u0000]*$"


def _descriptors() -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(gateway.descriptor_path().read_bytes())


def _method(files: descriptor_pb2.FileDescriptorSet, name: str) -> Any:
    return next(
        method
        for file in files.file
        for service in file.service
        for method in service.method
        if method.name == name
    )


def test_the_committed_copy_is_the_generated_document() -> None:
    committed = (ROOT / "openapi" / "openapi.json").read_text()
    assert committed == gateway.openapi_path().read_text(), (
        "openapi/openapi.json differs from the document generated from proto/: run `make openapi`"
    )


def test_the_command_writes_what_the_build_serves(tmp_path: Path) -> None:
    out = tmp_path / "openapi.json"
    assert openapi.main([str(gateway.descriptor_path()), "-o", str(out)]) == 0
    assert out.read_text() == gateway.openapi_path().read_text()


def test_every_http_rule_is_an_operation_with_its_scope() -> None:
    """Checked against the generated Python descriptors, not the descriptor set."""
    expected = set()
    services = [
        *pb.DESCRIPTOR.services_by_name.values(),
        *health_pb2.DESCRIPTOR.services_by_name.values(),
    ]
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            rule = options.Extensions[annotations_pb2.http]
            verb = rule.WhichOneof("pattern")
            scope = options.Extensions[options_pb2.required_scope]
            # A field of a field in the path is named by its own name ({sequence.id}: {id}).
            path = getattr(rule, verb).replace("{sequence.id}", "{id}")
            expected.add((path, verb, method.name, scope))
    found = {
        (path, verb, op["operationId"], op["security"][0]["bearer"][0] if "security" in op else "")
        for path, operations in DOC["paths"].items()
        for verb, op in operations.items()
    }
    assert found == expected
    assert ("/v1/sequences", "post", "CreateSequence", "sequences:write") in found
    # The health probes need no token: their operations name no security.
    assert ("/healthz", "get", "GetLiveness", "") in found
    assert ("/readyz", "get", "GetReadiness", "") in found


def test_each_operation_lists_the_errors_it_can_answer() -> None:
    gateway_and_auth = ["400", "401", "403", "405", "408", "422", "431", "500", "503", "504"]
    changes, body = ["404", "409", "412"], ["413", "415"]
    probe = ["200", *(status for status in gateway_and_auth if status not in ("401", "403"))]
    expected = {
        ("/healthz", "get"): probe,
        ("/readyz", "get"): probe,
        ("/v1/sequences", "post"): ["201", *sorted([*gateway_and_auth, "413", "415"])],
        ("/v1/sequences", "get"): ["200", *gateway_and_auth],
        ("/v1/sequences/{id}", "get"): ["200", *sorted([*gateway_and_auth, "404"])],
        # The changes: 409 for a state that does not allow it, 412 for a stale etag.
        ("/v1/sequences/{id}", "patch"): ["200", *sorted([*gateway_and_auth, *changes, *body])],
        ("/v1/sequences/{id}", "delete"): ["200", *sorted([*gateway_and_auth, *changes])],
        **{
            (f"/v1/sequences/{{id}}:{verb}", "post"): [
                "200",
                *sorted([*gateway_and_auth, *changes, *body]),
            ]
            for verb in ("activate", "pause", "resume", "archive", "undelete")
        },
        ("/v1/sequences/{sequence_id}/revisions", "get"): [
            "200",
            *sorted([*gateway_and_auth, "404"]),
        ],
        ("/v1/sequences/{sequence_id}/revisions/{revision}", "get"): [
            "200",
            *sorted([*gateway_and_auth, "404"]),
        ],
    }
    found = {
        (path, verb): list(op["responses"])
        for path, operations in DOC["paths"].items()
        for verb, op in operations.items()
    }
    assert found == expected
    responses = DOC["components"]["responses"]
    create_422 = DOC["paths"]["/v1/sequences"]["post"]["responses"]["422"]
    assert create_422["content"]["application/json"]["schema"] == {
        "allOf": [
            {"$ref": "#/components/schemas/Error"},
            {"properties": {"error": {"enum": ["validation_error", "idempotency_key_reused"]}}},
        ]
    }
    listing_422 = DOC["paths"]["/v1/sequences"]["get"]["responses"]["422"]
    assert listing_422 == {"$ref": "#/components/responses/validation_error"}
    assert responses["validation_error"]["content"]["application/json"]["schema"] == {
        "allOf": [
            {"$ref": "#/components/schemas/Error"},
            {"properties": {"error": {"enum": ["validation_error"]}}},
        ]
    }
    assert SCHEMAS["Error"]["required"] == ["error", "message"]
    assert list(responses["method_not_allowed"]["headers"]) == ["Allow"]
    assert list(responses["unauthenticated"]["headers"]) == ["WWW-Authenticate"]
    created = DOC["paths"]["/v1/sequences"]["post"]["responses"]["201"]
    assert list(created["headers"]) == ["Location"]
    assert DOC["components"]["securitySchemes"] == {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An OAuth 2 access token; each operation names its scope.",
        }
    }


def test_the_create_request_carries_the_validation_rules() -> None:
    request = SCHEMAS["CreateSequenceRequest"]
    assert list(request["properties"]) == ["brand_id", "name", "description", "steps", "request_id"]
    assert request["required"] == ["brand_id", "name", "steps"]
    assert "propertyNames" not in request  # a member named "" is ignored, like unknown ones
    brand_id = request["properties"]["brand_id"]
    assert brand_id == {
        "description": "brand_id is the brand the sequence belongs to (1 to 255 characters).",
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": NO_NUL,
    }
    description = request["properties"]["description"]
    assert (description["type"], description["maxLength"]) == (
        ["string", "null"],
        10_000,
    )
    steps = request["properties"]["steps"]
    assert (steps["type"], steps["maxItems"], steps["items"]) == (
        "array",
        100,
        {"$ref": "#/components/schemas/StepInput"},
    )
    assert steps[openapi.UNIQUE_BY] == "position"


def test_a_step_in_a_request_is_bounded_and_output_only_fields_are_read_only() -> None:
    step = SCHEMAS["StepInput"]
    props = step["properties"]
    assert step["required"] == ["position", "channel", "template_key", "delay_minutes"]
    assert props["id"]["readOnly"] is True and props["sequence_id"]["readOnly"] is True
    for name in ("position", "delay_minutes"):
        assert (props[name]["type"], props[name]["minimum"], props[name]["maximum"]) == (
            "integer",
            0,
            2**31 - 1,
        )
    assert props["channel"]["enum"] == ["email", "sms", "push", "in_app"]
    assert (props["template_key"]["minLength"], props["template_key"]["maxLength"]) == (
        1,
        255,
    )


def test_responses_print_every_key() -> None:
    sequence, step = SCHEMAS["Sequence"], SCHEMAS["Step"]
    assert sequence["required"] == list(sequence["properties"]) == SEQUENCE_KEYS
    assert step["required"] == list(step["properties"])
    props = sequence["properties"]
    assert props["description"]["type"] == ["string", "null"]
    assert props["status"]["enum"] == ["draft", "active", "paused", "archived"]
    assert props["deleted_at"]["type"] == ["string", "null"]
    assert props["revision"]["type"] == "integer"
    assert props["created_at"]["type"] == props["updated_at"]["type"] == "string"
    assert props["created_at"]["format"] == "date-time"
    assert props["id"]["readOnly"] is True
    # Request rules describe requests only: what comes back was accepted.
    assert "maxLength" not in props["name"]
    position = step["properties"]["position"]
    assert (position["minimum"], position["maximum"]) == (
        -(2**31),
        2**31 - 1,
    )


def test_reads_take_path_and_query_parameters() -> None:
    get = DOC["paths"]["/v1/sequences/{id}"]["get"]
    assert get["parameters"] == [
        {
            "name": "id",
            "in": "path",
            "description": "id is the sequence's id.",
            "required": True,
            "schema": {"type": "string"},
        }
    ]
    listing = DOC["paths"]["/v1/sequences"]["get"]
    assert [(p["name"], p["in"], p.get("required", False)) for p in listing["parameters"]] == [
        ("brand_id", "query", True),
        ("page_size", "query", False),
        ("page_token", "query", False),
        ("status", "query", False),
        ("show_deleted", "query", False),
    ]
    assert listing["parameters"][1]["schema"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 2**31 - 1,
    }
    assert "requestBody" not in listing and "requestBody" not in get


def test_a_method_without_scope_or_http_rule() -> None:
    files = _descriptors()
    _method(files, "GetSequence").options.ClearExtension(options_pb2.required_scope)
    _method(files, "ListSequences").options.ClearExtension(annotations_pb2.http)
    doc = openapi.build(files)
    get = doc["paths"]["/v1/sequences/{id}"]["get"]
    assert "security" not in get
    assert "401" not in get["responses"] and "403" not in get["responses"]
    assert list(doc["paths"]["/v1/sequences"]) == ["post"]  # gRPC only: no operation


def test_additional_bindings_and_unsupported_templates() -> None:
    files = _descriptors()
    rule = _method(files, "GetSequence").options.Extensions[annotations_pb2.http]
    rule.additional_bindings.add(get="/v1/drafts/{id=*}")
    assert openapi.build(files)["paths"]["/v1/drafts/{id}"]["get"]["operationId"] == "GetSequence"
    rule.additional_bindings[0].get = "/v1/{id=sequences/*}"
    with pytest.raises(ValueError, match="path segment pattern"):
        openapi.build(files)


@pytest.mark.parametrize(
    ("steps", "valid"),
    [
        ([{"position": 4}, {"position": 5}], True),
        ([{"position": 4}, {"position": 4}], False),
        ([{"position": 4}, {"position": 4.0}], False),  # one number
        ([{"position": 1}, {"position": True}], True),  # true is not 1 (and not an integer)
        ([{}, {}], True),
    ],
)
def test_x_unique_by_is_enforced_by_the_test_validator(steps: list[Any], valid: bool) -> None:
    schema = {"type": "array", openapi.UNIQUE_BY: "position"}
    assert Validator(schema).is_valid(steps) is valid


def _field(files: descriptor_pb2.FileDescriptorSet, message: str, name: str) -> Any:
    return next(
        field
        for file in files.file
        for m in file.message_type
        if m.name == message
        for field in m.field
        if field.name == name
    )


def test_a_rule_added_or_removed_in_the_proto_is_added_or_removed_in_the_document() -> None:
    files = _descriptors()
    _field(files, "Step", "template_key").options.Extensions[openapi.FIELD_RULES].string.ClearField(
        "max_len"
    )
    delay = _field(files, "Step", "delay_minutes").options.Extensions[openapi.FIELD_RULES]
    delay.int32.lte = 525_600
    step = openapi.build(files)["components"]["schemas"]["StepInput"]["properties"]
    assert "maxLength" not in step["template_key"]
    assert (step["delay_minutes"]["minimum"], step["delay_minutes"]["maximum"]) == (0, 525_600)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "string.email",
            r"Step\.template_key: \(buf\.validate\.field\)\.string\.email has no JSON",
        ),
        ("cel", r"Step\.template_key: CEL rule 'lowercase' has no JSON Schema"),
    ],
)
def test_a_rule_the_document_cannot_state_stops_the_build(rule: str, message: str) -> None:
    files = _descriptors()
    rules = _field(files, "Step", "template_key").options.Extensions[openapi.FIELD_RULES]
    if rule == "cel":
        rules.cel.add(id="lowercase", expression="this == this.lowerAscii()")
    else:
        rules.string.email = True
    with pytest.raises(ValueError, match=message):
        openapi.build(files)


def test_create_links_to_every_operation_on_the_sequence_it_made() -> None:
    links = DOC["paths"]["/v1/sequences"]["post"]["responses"]["201"]["links"]
    on_a_sequence = {
        op["operationId"]: re.search(r"\{(\w+)\}", path).group(1)  # type: ignore[union-attr]
        for path, operations in DOC["paths"].items()
        if path.startswith("/v1/sequences/{")
        for op in operations.values()
    }
    assert len(on_a_sequence) == 10
    assert links == {
        name: {"operationId": name, "parameters": {variable: "$response.body#/id"}}
        for name, variable in on_a_sequence.items()
    }
    assert on_a_sequence["GetSequenceRevision"] == "sequence_id"
