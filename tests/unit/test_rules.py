"""The proto's buf.validate annotations are the only statement of a request rule.

Every rule of a create request's fields is read from the descriptor here and tried at its
boundary, on the server's check (comms.validation) and on the OpenAPI document's schema: both
must accept the value the rule allows and refuse the one it does not, the server naming the
field. A rule added in the proto is thus tried everywhere; one of a kind this test cannot try
fails it. A removed rule is refused nowhere: past every limit, a value is accepted by both."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.api import field_behavior_pb2
from google.protobuf import descriptor, json_format

from buf.validate import validate_pb2
from comms import gateway, validation
from comms.v1 import sequences_pb2 as pb
from tests.openapi_schema import body_pointer, validator
from tests.requests import with_value, without

FIELD_RULES: Any = validate_pb2.field
FIELD_BEHAVIOR: Any = field_behavior_pb2.field_behavior
DOCUMENT = json.loads(gateway.openapi_path().read_text())
BODY = validator(DOCUMENT, body_pointer("/v1/sequences", "post"))


def _rules(field: descriptor.FieldDescriptor) -> Any:
    return field.GetOptions().Extensions[FIELD_RULES]


def _step(position: int) -> dict[str, Any]:
    return {"position": position, "channel": "sms", "template_key": "k", "delay_minutes": 0}


def _cases(field: descriptor.FieldDescriptor, path: str) -> list[tuple[str, dict[str, Any], bool]]:
    """(what, body, allowed) at the boundary of each rule of the field at dotted path."""
    rules, cases = _rules(field), []
    if rules.required:
        cases.append(("missing", without(path), False))
    kind = rules.WhichOneof("type")
    for rule, value in getattr(rules, kind).ListFields() if kind else []:
        name = f"{kind}.{rule.name}"
        if name == "string.max_len":
            cases += [(name, with_value(path, "x" * value), True)]
            cases += [(name, with_value(path, "x" * (value + 1)), False)]
        elif name == "string.not_contains":
            cases += [(name, with_value(path, f"a{value}b"), False)]
        elif name == "string.pattern":
            cases += [(name, with_value(path, "printable ~"), True)]
            cases += [(name, with_value(path, "caf\u00e9"), False)]
        elif name == "string.min_len":
            cases += [(name, with_value(path, "x" * value), True)]
            cases += [(name, with_value(path, "x" * (value - 1)), False)]
        elif name in ("int32.gte", "int32.gt", "int32.lte", "int32.lt"):
            edge = {"gte": value, "gt": value + 1, "lte": value, "lt": value - 1}[rule.name]
            past = edge - 1 if rule.name.startswith("g") else edge + 1
            cases += [(name, with_value(path, edge), True), (name, with_value(path, past), False)]
        elif name == "repeated.max_items":
            cases += [(name, with_value(path, [_step(i) for i in range(value)]), True)]
            cases += [(name, with_value(path, [_step(i) for i in range(value + 1)]), False)]
        elif name == "enum.defined_only":
            cases += [(name, with_value(path, len(field.enum_type.values)), False)]
        else:
            pytest.fail(f"{path}: no boundary for (buf.validate.field).{name}: add one here")
    for cel in rules.cel:
        if cel.id != "steps.unique_positions":
            pytest.fail(f"{path}: no boundary for CEL rule {cel.id!r}: add one here")
        cases += [(cel.id, with_value(path, [_step(3), _step(4)]), True)]
        cases += [(cel.id, with_value(path, [_step(3), _step(3)]), False)]
    return cases


def _paths() -> list[tuple[descriptor.FieldDescriptor, str]]:
    """Each field a create body holds, by dotted path (a step's as steps.0.name)."""
    found = [(f, f.name) for f in pb.CreateSequenceRequest.DESCRIPTOR.fields]
    found += [(f, f"steps.0.{f.name}") for f in pb.Step.DESCRIPTOR.fields]
    return found


CASES = [
    (path, what, body, allowed)
    for field, path in _paths()
    for what, body, allowed in _cases(field, path)
]


@pytest.mark.parametrize(
    ("path", "what", "body", "allowed"), CASES, ids=[f"{c[0]} {c[1]} {c[3]}" for c in CASES]
)
def test_server_and_document_follow_each_rule(
    path: str, what: str, body: dict[str, Any], allowed: bool
) -> None:
    request = json_format.ParseDict(body, pb.CreateSequenceRequest())
    named = {v.field for v in validation.violations(request)}
    field = path.replace(".0.", "[0].") if what != "steps.unique_positions" else "steps"
    assert (field not in named) is allowed, (what, sorted(named))
    assert BODY.is_valid(body) is allowed, what


def test_every_rule_kind_is_tried() -> None:
    tried = {what for _, what, _, _ in CASES}
    assert tried >= {
        "missing",
        "string.max_len",
        "string.not_contains",
        "string.pattern",
        "int32.gte",
        "repeated.max_items",
        "enum.defined_only",
        "steps.unique_positions",
    }


BOUNDED = [(f, p) for f, p in _paths() if f.type in (f.TYPE_STRING, f.TYPE_INT32)]


@pytest.mark.parametrize(("field", "path"), BOUNDED, ids=[p for _, p in BOUNDED])
def test_past_every_limit_a_value_is_accepted_by_both(
    field: descriptor.FieldDescriptor, path: str
) -> None:
    """What the proto does not forbid, neither the server nor the document refuses: a string
    at its max_len (or far longer when it has none), a number at its gte (or int32's least)."""
    rules = _rules(field)
    if field.type == descriptor.FieldDescriptor.TYPE_STRING:
        body = with_value(path, "A" * (rules.string.max_len or 20_000))
    else:
        body = with_value(path, rules.int32.gte if rules.int32.HasField("gte") else -(2**31))
    request = json_format.ParseDict(body, pb.CreateSequenceRequest())
    assert validation.violations(request) == []
    assert BODY.is_valid(body)


def test_every_request_string_refuses_nul() -> None:
    """PostgreSQL cannot store U+0000: every string a request stores or looks up refuses it
    (request_id by its printable-ASCII pattern, the others by not_contains)."""
    for message in (pb.CreateSequenceRequest, pb.Step, pb.ListSequencesRequest):
        for field in message.DESCRIPTOR.fields:
            output_only = (
                field_behavior_pb2.OUTPUT_ONLY in field.GetOptions().Extensions[FIELD_BEHAVIOR]
            )
            if field.type != descriptor.FieldDescriptor.TYPE_STRING or output_only:
                continue
            request = message(**{field.name: "a\x00"})
            assert field.name in {v.field for v in validation.violations(request)}, field.full_name
