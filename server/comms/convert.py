"""The only module that knows both stored rows (as dicts of column values) and protobuf messages."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Sequence as Seq
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from comms.v1 import sequences_pb2 as pb

Row = dict[str, Any]


def new_id() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): time-ordered, so new rows land at the end of the primary key index."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 4122 variant
    return uuid.UUID(int=value)


def utc_now() -> dt.datetime:
    """Now in UTC, naive (as stored), at the microsecond precision both stores keep."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def new_etag() -> str:
    """An etag no earlier version of any sequence had: 128 random bits."""
    return os.urandom(16).hex()


def rows_from_request(request: pb.CreateSequenceRequest, now: dt.datetime) -> tuple[Row, list[Row]]:
    """The sequence row and its step rows for a validated create request."""
    sequence_id = new_id()
    sequence: Row = {
        "id": sequence_id,
        "brand_id": request.brand_id,
        "name": request.name,
        "description": request.description if request.HasField("description") else None,
        "status": pb.Status.Name(pb.draft),
        "created_at": now,
        "updated_at": now,
        "etag": new_etag(),
        "revision": 0,
        "changed": True,
        "deleted_at": None,
    }
    return sequence, step_rows(sequence_id, request.steps)


def step_rows(sequence_id: uuid.UUID, steps: Seq[pb.Step]) -> list[Row]:
    """New step rows (new ids) for validated steps, ordered by position."""
    return [
        {
            "id": new_id(),
            "sequence": sequence_id,
            "position": step.position,
            "channel": pb.Channel.Name(step.channel),
            "template_key": step.template_key,
            "delay_minutes": step.delay_minutes,
        }
        for step in sorted(steps, key=lambda s: s.position)
    ]


def _string_or_null(text: str | None) -> struct_pb2.Value:
    value = struct_pb2.Value()
    if text is None:
        value.null_value = struct_pb2.NULL_VALUE
    else:
        value.string_value = text
    return value


def _rfc3339(moment: dt.datetime) -> str:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp.ToJsonString()


def _step_messages(sequence_id: uuid.UUID, steps: Seq[Row]) -> list[pb.Step]:
    return [
        pb.Step(
            id=str(step["id"]),
            sequence_id=str(sequence_id),
            position=step["position"],
            channel=step["channel"],
            template_key=step["template_key"],
            delay_minutes=step["delay_minutes"],
        )
        for step in steps
    ]


def sequence_message(sequence: Row, steps: Seq[Row]) -> pb.Sequence:
    """The API's Sequence for stored rows; steps must already be ordered by position."""
    deleted_at = sequence["deleted_at"]
    message = pb.Sequence(
        id=str(sequence["id"]),
        brand_id=sequence["brand_id"],
        name=sequence["name"],
        description=_string_or_null(sequence["description"]),
        status=sequence["status"],
        steps=_step_messages(sequence["id"], steps),
        etag=sequence["etag"],
        revision=sequence["revision"],
        deleted_at=_string_or_null(None if deleted_at is None else _rfc3339(deleted_at)),
    )
    message.created_at.FromDatetime(sequence["created_at"])
    message.updated_at.FromDatetime(sequence["updated_at"])
    return message


def revision_row(
    sequence: Row, steps: Seq[Row], revision: int, now: dt.datetime, created_by: str
) -> Row:
    """The immutable record of the sequence as it goes live now."""
    kept = ("id", "position", "channel", "template_key", "delay_minutes")
    return {
        "sequence": sequence["id"],
        "revision": revision,
        "created_at": now,
        "created_by": created_by,
        "name": sequence["name"],
        "description": sequence["description"],
        "steps": json.dumps([{k: str(s[k]) if k == "id" else s[k] for k in kept} for s in steps]),
    }


def revision_message(row: Row) -> pb.SequenceRevision:
    message = pb.SequenceRevision(
        revision=row["revision"],
        sequence_id=str(row["sequence"]),
        created_by=row["created_by"],
        name=row["name"],
        description=_string_or_null(row["description"]),
        steps=_step_messages(row["sequence"], json.loads(row["steps"])),
    )
    message.created_at.FromDatetime(row["created_at"])
    return message
