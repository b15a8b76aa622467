"""Every query the service runs. Models carry no database: each query names the one it runs
on, so that several databases can live in one process (tests) without a global binding."""

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


class PreparedInsert:
    """An INSERT of whole rows whose SQL is written once per database, not built per call:
    building it with the query builder was the largest part of a create's CPU."""

    def __init__(self, model: type[pw.Model]) -> None:
        self._table = model._meta.table_name
        self._fields = model._meta.sorted_fields

    def run(self, database: pw.Database, rows: list[Row]) -> None:
        columns = ", ".join(f'"{f.column_name}"' for f in self._fields)
        marks = ", ".join([database.param] * len(self._fields))
        sql = _sql_cache.setdefault(
            ("insert", self._table, database.param),
            f'INSERT INTO "{self._table}" ({columns}) VALUES ({marks})',
        )
        values = [[f.db_value(row[f.name]) for f in self._fields] for row in rows]
        with pw.__exception_wrapper__:  # type: ignore[attr-defined]  # driver errors as peewee's
            database.cursor().executemany(sql, values)


class PreparedLookup:
    """A SELECT of the whole row whose key columns equal the values given, its SQL written
    once per database (like PreparedInsert: the query builder cost 30 times the query)."""

    def __init__(self, model: type[pw.Model], key: tuple[str, ...]) -> None:
        self._table = model._meta.table_name
        self._fields = model._meta.sorted_fields
        self._key = key

    def run(self, database: pw.Database, *key: Any) -> Row | None:
        columns = ", ".join(f'"{f.column_name}"' for f in self._fields)
        where = " AND ".join(f'"{name}" = {database.param}' for name in self._key)
        sql = _sql_cache.setdefault(
            ("lookup", self._table, database.param),
            f'SELECT {columns} FROM "{self._table}" WHERE {where}',
        )
        with pw.__exception_wrapper__:  # type: ignore[attr-defined]
            cursor = database.cursor()
            cursor.execute(sql, key)
            found = cursor.fetchone()
        if found is None:
            return None
        return {f.name: f.python_value(value) for f, value in zip(self._fields, found, strict=True)}


_sql_cache: dict[tuple[str, str, str], str] = {}
SEQUENCE_INSERT = PreparedInsert(SequenceRow)
STEP_INSERT = PreparedInsert(StepRow)
IDEMPOTENCY_INSERT = PreparedInsert(IdempotencyRow)
IDEMPOTENCY_LOOKUP = PreparedLookup(IdempotencyRow, ("caller", "key"))


def insert_sequence(database: pw.Database, sequence: Row, steps: list[Row]) -> None:
    SEQUENCE_INSERT.run(database, [sequence])
    if steps:
        STEP_INSERT.run(database, steps)


def _with_steps(database: pw.Database, sequences: list[Row]) -> list[Found]:
    """The sequences, each with its steps, in two queries whatever their number."""
    if not sequences:
        return []
    steps: Any = (  # dict rows; peewee's hints know only model rows
        StepRow.select()
        .where(StepRow.sequence.in_([s["id"] for s in sequences]))
        .order_by(StepRow.sequence, StepRow.position)
        .dicts()
        .execute(database)
    )
    by_sequence = {key: list(group) for key, group in groupby(steps, key=lambda s: s["sequence"])}
    return [(s, by_sequence.get(s["id"], [])) for s in sequences]


def get_sequence(database: pw.Database, sequence_id: uuid.UUID) -> Found | None:
    rows: Any = SequenceRow.select().where(SequenceRow.id == sequence_id).dicts()
    found = _with_steps(database, list(rows.execute(database)))
    return found[0] if found else None


def list_sequences(
    database: pw.Database, brand_id: str, after: Cursor | None, limit: int
) -> list[Found]:
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
    return _with_steps(database, list(rows.dicts().execute(database)))


def _idempotency_key(caller: str, key: str) -> Any:
    return (IdempotencyRow.caller == caller) & (IdempotencyRow.key == key)


def find_idempotency(database: pw.Database, caller: str, key: str) -> Row | None:
    return IDEMPOTENCY_LOOKUP.run(database, caller, key)


def insert_idempotency(database: pw.Database, row: Row) -> None:
    IDEMPOTENCY_INSERT.run(database, [row])


def delete_idempotency(database: pw.Database, caller: str, key: str) -> None:
    IdempotencyRow.delete().where(_idempotency_key(caller, key)).execute(database)


def purge_idempotency(database: pw.Database, before: dt.datetime) -> int:
    """Forget keys recorded before this time; returns how many."""
    query = IdempotencyRow.delete().where(IdempotencyRow.created_at < before)
    return int(query.execute(database))


def page_token_secret(database: pw.Database) -> bytes:
    rows: Any = SecretRow.select(SecretRow.value).where(SecretRow.name == "page_token_key")
    return bytes.fromhex(rows.scalar(database))


def counts(database: pw.Database) -> tuple[int, int]:
    """Rows stored: (sequences, steps)."""
    return SequenceRow.select().count(database), StepRow.select().count(database)
