"""What an update changes: the mask's paths (or the fields sent), the create rules of the
fields it replaces, and the columns and steps that differ from what is stored."""

from __future__ import annotations

from typing import Any

from buf.validate import validate_pb2
from comms import convert, store, validation
from comms.convert import Row
from comms.v1 import sequences_pb2 as pb
from comms.validation import FieldViolation

# What an update changes: columns and their new values, and the new step rows (None: kept).
Changes = tuple[dict[str, Any], list[Row] | None]
# Mask paths an update may name, as the proto's rule of update_mask lists them (the rest of a
# sequence is the server's, or immutable). Each must be one of them exactly: the rule itself
# would let sub-paths (steps.position) through, so it is checked here, not by protovalidate.
_FIELD_RULES: Any = validate_pb2.field  # typed by the stubs as a plain field
_MASK = pb.UpdateSequenceRequest.DESCRIPTOR.fields_by_name["update_mask"]
EDITABLE = tuple(getattr(_MASK.GetOptions().Extensions[_FIELD_RULES].field_mask, "in"))


def paths(request: pb.UpdateSequenceRequest) -> tuple[list[str], list[FieldViolation]]:
    """The fields an update replaces: the mask's paths, or without one those the body holds
    (proto3 cannot tell steps: [] from no steps: clearing them needs the mask)."""
    sent = request.sequence
    if not request.HasField("update_mask"):
        present = {
            "name": sent.HasField("name"),
            "description": sent.HasField("description"),
            "steps": len(sent.steps) > 0,
        }
        return [path for path in EDITABLE if present[path]], []
    named = list(dict.fromkeys(request.update_mask.paths))
    unknown = [path for path in named if path not in EDITABLE]
    if unknown:
        rule = f"may name only {', '.join(EDITABLE)}, got {', '.join(map(repr, unknown))}"
        return [], [FieldViolation("update_mask", rule)]
    return named, []


def violations(request: pb.UpdateSequenceRequest, paths: list[str]) -> list[FieldViolation]:
    """The create rules of the fields the update replaces (a JSON null description is none)."""
    sent = request.sequence
    kind = sent.description.WhichOneof("kind")
    found = []
    if "description" in paths and kind not in (None, "null_value", "string_value"):
        found.append(FieldViolation("description", "must be a string or null"))
    as_create = pb.CreateSequenceRequest(name=sent.name, steps=sent.steps)
    if kind == "string_value":
        as_create.description = sent.description.string_value
    for violation in validation.violations(as_create):
        if violation.field.split(".")[0].split("[")[0] in paths:  # "steps[2].channel": steps
            found.append(violation)
    return found


def changes(request: pb.UpdateSequenceRequest, paths: list[str], found: store.Found) -> Changes:
    """(changed columns, new step rows or None) for the update; both empty when it would
    change nothing."""
    row, steps = found
    sent = request.sequence
    changes: dict[str, Any] = {}
    if "name" in paths and sent.name != row["name"]:
        changes["name"] = sent.name
    description = (
        sent.description.string_value
        if sent.description.WhichOneof("kind") == "string_value"
        else None
    )
    if "description" in paths and description != row["description"]:
        changes["description"] = description
    new_steps = None
    if "steps" in paths:
        kept = ("position", "channel", "template_key", "delay_minutes")
        now = [tuple(s[k] for k in kept) for s in steps]
        wanted = convert.step_rows(row["id"], sent.steps)
        if [tuple(s[k] for k in kept) for s in wanted] != now:
            new_steps = wanted
    return changes, new_steps
