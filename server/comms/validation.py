"""Every rule a create request must meet, in one place.

A rule broken becomes a FieldViolation naming the field by its JSON path (steps[2].channel)
and the rule; the servicer turns them into INVALID_ARGUMENT with google.rpc.BadRequest."""

from __future__ import annotations

from dataclasses import dataclass

from comms.v1 import sequences_pb2 as pb

MAX_ID_CHARS = 255  # brand_id, name, template_key
MAX_DESCRIPTION_CHARS = 10_000
MAX_STEPS = 100
INT32_MAX = 2**31 - 1
CHANNELS = tuple(v.name for v in pb.Channel.DESCRIPTOR.values if v.number != 0)


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


def _text(field: str, value: str, max_chars: int, required: bool) -> list[FieldViolation]:
    if required and not value:
        return [FieldViolation(field, "is required and must be a non-empty string")]
    if len(value) > max_chars:
        return [FieldViolation(field, f"must be at most {max_chars} characters, got {len(value)}")]
    if "\x00" in value:
        return [FieldViolation(field, "must not contain the NUL character (U+0000)")]
    return []


def _count(field: str, step: pb.Step, name: str) -> list[FieldViolation]:
    """position and delay_minutes: required, 0 to INT32_MAX (int32 already caps the top)."""
    if not step.HasField(name):
        return [FieldViolation(field, f"is required and must be an integer from 0 to {INT32_MAX}")]
    value: int = getattr(step, name)
    if value < 0:
        return [FieldViolation(field, f"must be an integer from 0 to {INT32_MAX}, got {value}")]
    return []


def _step(index: int, step: pb.Step, first_at: dict[int, int]) -> list[FieldViolation]:
    """The step's violations; first_at maps each position seen so far to its step's index."""
    path = f"steps[{index}]"
    found = _count(f"{path}.position", step, "position")
    if not found:
        if step.position in first_at:
            found.append(
                FieldViolation(
                    f"{path}.position",
                    f"must be unique within the sequence: {step.position} is already used by "
                    f"steps[{first_at[step.position]}]",
                )
            )
        else:
            first_at[step.position] = index
    if step.channel == pb.CHANNEL_UNSPECIFIED or step.channel not in pb.Channel.values():
        found.append(
            FieldViolation(
                f"{path}.channel", f"is required and must be one of {', '.join(CHANNELS)}"
            )
        )
    found += _text(f"{path}.template_key", step.template_key, MAX_ID_CHARS, required=True)
    found += _count(f"{path}.delay_minutes", step, "delay_minutes")
    return found


def create_sequence_violations(request: pb.CreateSequenceRequest) -> list[FieldViolation]:
    """All the rules the request breaks, in field order; empty when it may be stored."""
    found = _text("brand_id", request.brand_id, MAX_ID_CHARS, required=True)
    found += _text("name", request.name, MAX_ID_CHARS, required=True)
    if request.HasField("description"):
        found += _text("description", request.description, MAX_DESCRIPTION_CHARS, required=False)
    if len(request.steps) > MAX_STEPS:
        # Checking each of an oversized list would only bury this one violation.
        found.append(
            FieldViolation(
                "steps", f"must have at most {MAX_STEPS} steps, got {len(request.steps)}"
            )
        )
        return found
    first_at: dict[int, int] = {}
    for i, step in enumerate(request.steps):
        found += _step(i, step, first_at)
    return found


DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_IDEMPOTENCY_KEY_CHARS = 255


def idempotency_key_violations(field: str, key: str) -> list[FieldViolation]:
    """A key is 1 to 255 printable ASCII characters (it travels as an HTTP header)."""
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not all(" " <= c <= "~" for c in key):
        return [
            FieldViolation(
                field,
                f"must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters",
            )
        ]
    return []


def list_sequences_violations(request: pb.ListSequencesRequest) -> list[FieldViolation]:
    """The rules of a list request; page_token is checked when it is decoded."""
    found = _text("brand_id", request.brand_id, MAX_ID_CHARS, required=True)
    if request.page_size < 0:
        found.append(FieldViolation("page_size", f"must not be negative, got {request.page_size}"))
    return found


def page_size(request: pb.ListSequencesRequest) -> int:
    """The page size to serve: the default for 0, larger values clamped to the maximum."""
    return min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
