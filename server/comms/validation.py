"""Request rules: written once, as buf.validate annotations in proto/, checked by protovalidate.

This module runs them and words what they report: each violation becomes a FieldViolation
naming the field by its JSON path (steps[2].channel) and the rule; the servicer turns them
into INVALID_ARGUMENT with google.rpc.BadRequest. What stays here states no limit of its own:
a list over its max_items is checked first, alone (see violations); the Idempotency-Key header
is request_id by another name, so request_id's rules check it; and how a page size is read."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import protovalidate
from google.protobuf import descriptor, message

from buf.validate import validate_pb2
from comms.v1 import sequences_pb2 as pb

# The stubs type this extension as a plain field, which Extensions[] does not take.
_FIELD_RULES: Any = validate_pb2.field
# One validator for the process: it compiles each message's rules once and caches them.
_validator = protovalidate.Validator()


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}" if self.field else self.description


def _shown(text: str) -> str:
    """Text for a message: characters that do not print are written as U+XXXX."""
    return "".join(c if c.isprintable() else f"U+{ord(c):04X}" for c in text)


def _choices(field: descriptor.FieldDescriptor | None) -> str:
    """An enum field's JSON words; the zero value means unset and is never valid."""
    enum = field.enum_type if field is not None else None
    return ", ".join(v.name for v in enum.values if v.number != 0) if enum else ""


# How each kind of rule reads, by protovalidate's rule id: (rule value, field value, field)
# -> description. Other kinds keep protovalidate's own text; custom CEL rules bring their
# message from the proto.
_WORDING: dict[str, Callable[[Any, Any, descriptor.FieldDescriptor | None], str]] = {
    "required": lambda _r, _v, f: (
        "is required" + (f" and must be one of {_choices(f)}" if _choices(f) else "")
    ),
    "string.max_len": lambda r, v, _f: f"must be at most {r} characters, got {len(v)}",
    "string.not_contains": lambda r, _v, _f: f"must not contain {_shown(r)}",
    "string.pattern": lambda r, _v, _f: f"must match the regular expression {r}",
    "int32.gte": lambda r, v, _f: f"must be at least {r}, got {v}",
    "repeated.max_items": lambda r, v, _f: f"must have at most {r} items, got {len(v)}",
    "enum.defined_only": lambda _r, v, f: f"must be one of {_choices(f)}, got {v}",
}


def _field_violation(
    request: message.Message, violation: protovalidate.Violation
) -> FieldViolation:
    found = violation.proto
    path, field = "", None
    owner: Any = request.DESCRIPTOR  # the message type the next path element is a field of
    for element in found.field.elements if found.field else []:
        field = owner.fields_by_number.get(element.field_number) if owner else None
        path += f".{element.field_name}" if path else element.field_name
        if element.subscript is not None:
            path += f"[{element.subscript.value}]"
        owner = field.message_type if field is not None else None
    word = _WORDING.get(found.rule_id or "")
    if word is not None:
        text = word(violation.rule_value, violation.field_value, field)
    else:
        text = (found.message or found.rule_id or "is invalid").removeprefix("value ")
    return FieldViolation(path, text)


@functools.cache
def _list_limits(message_type: Any) -> dict[str, int]:
    """The max_items of each of the message type's lists that has one, by field name."""
    limits = {}
    for field in message_type.fields:
        rules = field.GetOptions().Extensions[_FIELD_RULES]
        if rules.repeated.HasField("max_items"):
            limits[field.name] = rules.repeated.max_items
    return limits


def violations(request: message.Message) -> list[FieldViolation]:
    """Every rule the request breaks, in field order; empty when it may be served.

    A list over its max_items is reported alone, its items unchecked: checking each of an
    oversized list would bury that one violation, and CEL rules over a list of 50,000 steps
    (a 1 MiB body) cost 100 ms or more, or exceed protovalidate's budget (an error)."""
    limits = _list_limits(request.DESCRIPTOR)
    over = [name for name, most in limits.items() if len(getattr(request, name)) > most]
    if not over:
        return [_field_violation(request, v) for v in _validator.collect_violations(request)]
    rest = type(request)()
    rest.CopyFrom(request)
    for name in over:
        rest.ClearField(name)
    return violations(rest) + [
        FieldViolation(
            name, _WORDING["repeated.max_items"](limits[name], getattr(request, name), None)
        )
        for name in over
    ]


def idempotency_key_violations(field: str, key: str) -> list[FieldViolation]:
    """The Idempotency-Key header's violations, named `field`: request_id's rules."""
    checked = violations(pb.CreateSequenceRequest(request_id=key))
    return [FieldViolation(field, v.description) for v in checked if v.field == "request_id"]


DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100


def page_size(request: pb.ListSequencesRequest | pb.ListSequenceRevisionsRequest) -> int:
    """The page size to serve: the default for 0, larger values clamped to the maximum."""
    return min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
