"""The only module that knows both stored rows (as dicts of column values) and protobuf messages."""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Sequence as Seq
from typing import Any

from google.protobuf import struct_pb2

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
    }
    steps: list[Row] = [
        {
            "id": new_id(),
            "sequence": sequence_id,
            "position": step.position,
            "channel": pb.Channel.Name(step.channel),
            "template_key": step.template_key,
            "delay_minutes": step.delay_minutes,
        }
        for step in sorted(request.steps, key=lambda s: s.position)
    ]
    return sequence, steps


def sequence_message(sequence: Row, steps: Seq[Row]) -> pb.Sequence:
    """The API's Sequence for stored rows; steps must already be ordered by position."""
    description = struct_pb2.Value()
    if sequence["description"] is None:
        description.null_value = struct_pb2.NULL_VALUE
    else:
        description.string_value = sequence["description"]
    message = pb.Sequence(
        id=str(sequence["id"]),
        brand_id=sequence["brand_id"],
        name=sequence["name"],
        description=description,
        status=sequence["status"],
        steps=[
            pb.Step(
                id=str(step["id"]),
                sequence_id=str(sequence["id"]),
                position=step["position"],
                channel=step["channel"],
                template_key=step["template_key"],
                delay_minutes=step["delay_minutes"],
            )
            for step in steps
        ],
    )
    message.created_at.FromDatetime(sequence["created_at"])
    message.updated_at.FromDatetime(sequence["updated_at"])
    return message
