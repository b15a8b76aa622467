"""Every query the service runs, on the models; callers hold the connection and transaction."""

from __future__ import annotations

import datetime as dt
import uuid
from itertools import groupby
from typing import Any

import peewee as pw

from comms.convert import Row
from comms.models import IdempotencyRow, SecretRow, SequenceRow, StepRow
from comms.paging import Cursor

Found = tuple[Row, list[Row]]  # a sequence row and its step rows, by position


def insert_sequence(sequence: Row, steps: list[Row]) -> None:
    SequenceRow.insert(sequence).execute()
    if steps:
        StepRow.insert_many(steps).execute()


def _with_steps(sequences: list[Row]) -> list[Found]:
    """The sequences, each with its steps, in two queries whatever their number."""
    if not sequences:
        return []
    steps: Any = (  # dict rows; peewee's hints know only model rows
        StepRow.select()
        .where(StepRow.sequence.in_([s["id"] for s in sequences]))
        .order_by(StepRow.sequence, StepRow.position)
        .dicts()
    )
    by_sequence = {key: list(group) for key, group in groupby(steps, key=lambda s: s["sequence"])}
    return [(s, by_sequence.get(s["id"], [])) for s in sequences]


def get_sequence(sequence_id: uuid.UUID) -> Found | None:
    rows: Any = SequenceRow.select().where(SequenceRow.id == sequence_id).dicts()
    found = _with_steps(list(rows))
    return found[0] if found else None


def list_sequences(brand_id: str, after: Cursor | None, limit: int) -> list[Found]:
    """A brand's sequences newest first, ties broken by id, starting after the cursor."""
    query: Any = SequenceRow.select().where(SequenceRow.brand_id == brand_id)
    if after is not None:
        # A row-value comparison, which both stores answer from the index as a range.
        query = query.where(
            pw.Tuple(SequenceRow.created_at, SequenceRow.id)
            < pw.Tuple(  # converted by hand: a Tuple does not apply the fields' conversions
                SequenceRow.created_at.db_value(after.created_at),
                SequenceRow.id.db_value(after.id),
            )
        )
    rows = query.order_by(SequenceRow.created_at.desc(), SequenceRow.id.desc()).limit(limit)
    return _with_steps(list(rows.dicts()))


def find_idempotency(caller: str, brand_id: str, key: str) -> Any:
    return IdempotencyRow.get_or_none(
        (IdempotencyRow.caller == caller)
        & (IdempotencyRow.brand_id == brand_id)
        & (IdempotencyRow.key == key)
    )


def insert_idempotency(
    caller: str,
    brand_id: str,
    key: str,
    request_hash: str,
    sequence_id: uuid.UUID,
    now: dt.datetime,
) -> None:
    IdempotencyRow.insert(
        caller=caller,
        brand_id=brand_id,
        key=key,
        request_hash=request_hash,
        sequence_id=sequence_id,
        created_at=now,
    ).execute()


def delete_idempotency(record: Any) -> None:
    record.delete_instance()


def purge_idempotency(before: dt.datetime) -> int:
    """Forget keys recorded before this time; returns how many."""
    return int(IdempotencyRow.delete().where(IdempotencyRow.created_at < before).execute())


def page_token_secret() -> bytes:
    return bytes.fromhex(SecretRow.get_by_id("page_token_key").value)
