"""Every query the service runs. Models carry no database: each query names the one it runs
on, so that several databases can live in one process (tests) without a global binding."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence as Seq
from itertools import groupby
from typing import Any

import peewee as pw

from comms.convert import Row
from comms.models import IdempotencyRow, RevisionRow, SecretRow, SequenceRow, StepRow
from comms.paging import Cursor

Found = tuple[Row, list[Row]]  # a sequence row and its step rows, by position


class PreparedInsert:
    """An INSERT of whole rows whose SQL is written once per database, not built per call:
    building it with the query builder was the largest part of a create's CPU."""

    def __init__(self, model: type[pw.Model]) -> None:
        self._table = model._meta.table_name
        self._fields = model._meta.sorted_fields
        self._sql: dict[str, str] = {}  # by the database's parameter mark

    def run(self, database: pw.Database, rows: list[Row]) -> None:
        sql = self._sql.get(database.param)
        if sql is None:
            columns = ", ".join(f'"{f.column_name}"' for f in self._fields)
            marks = ", ".join([database.param] * len(self._fields))
            sql = self._sql[database.param] = (
                f'INSERT INTO "{self._table}" ({columns}) VALUES ({marks})'
            )
        values = [[f.db_value(row[f.name]) for f in self._fields] for row in rows]
        with pw.__exception_wrapper__:  # type: ignore[attr-defined]  # driver errors as peewee's
            database.cursor().executemany(sql, values)


class PreparedSelect:
    """A SELECT of whole rows whose key columns equal the values given, in the order of the
    columns named, its SQL written once per database (like PreparedInsert: the query builder
    cost 30 times the query), its rows turned into dicts without building models."""

    def __init__(
        self, model: type[pw.Model], key: tuple[str, ...], order: tuple[str, ...] = ()
    ) -> None:
        self._table = model._meta.table_name
        self._fields = model._meta.sorted_fields
        self._key = key
        self._order = order
        self._sql: dict[str, str] = {}  # by the database's parameter mark

    def all(self, database: pw.Database, *key: Any) -> list[Row]:
        sql = self._sql.get(database.param)
        if sql is None:
            columns = ", ".join(f'"{f.column_name}"' for f in self._fields)
            where = " AND ".join(f'"{name}" = {database.param}' for name in self._key)
            order = f" ORDER BY {', '.join(self._order)}" if self._order else ""
            sql = self._sql[database.param] = (
                f'SELECT {columns} FROM "{self._table}" WHERE {where}{order}'
            )
        with pw.__exception_wrapper__:  # type: ignore[attr-defined]
            cursor = database.cursor()
            cursor.execute(sql, key)
            found = cursor.fetchall()
        fields = self._fields
        return [
            {f.name: f.python_value(v) for f, v in zip(fields, row, strict=True)} for row in found
        ]

    def one(self, database: pw.Database, *key: Any) -> Row | None:
        found = self.all(database, *key)
        return found[0] if found else None


SEQUENCE_INSERT = PreparedInsert(SequenceRow)
STEP_INSERT = PreparedInsert(StepRow)
IDEMPOTENCY_INSERT = PreparedInsert(IdempotencyRow)
IDEMPOTENCY_LOOKUP = PreparedSelect(IdempotencyRow, ("caller", "key"))
SEQUENCE_LOOKUP = PreparedSelect(SequenceRow, ("id",))
STEPS_OF_SEQUENCE = PreparedSelect(StepRow, ("sequence_id",), order=("position",))


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
    # The API's hottest path: two prepared queries, no query building.
    key = SequenceRow.id.db_value(sequence_id)
    sequence = SEQUENCE_LOOKUP.one(database, key)
    if sequence is None:
        return None
    return sequence, STEPS_OF_SEQUENCE.all(database, key)


def list_sequences(
    database: pw.Database,
    brand_id: str,
    after: Cursor | None,
    limit: int,
    statuses: Seq[str] = (),
    deleted_since: dt.datetime | None = None,
) -> list[Found]:
    """A brand's sequences newest first, ties broken by id, starting after the cursor: only
    those in one of statuses (if any), and never deleted ones unless deleted since
    deleted_since."""
    query: Any = SequenceRow.select().where(SequenceRow.brand_id == brand_id)
    if statuses:
        query = query.where(SequenceRow.status.in_(list(statuses)))
    if deleted_since is None:
        query = query.where(SequenceRow.deleted_at.is_null())
    else:
        query = query.where(
            SequenceRow.deleted_at.is_null() | (SequenceRow.deleted_at > deleted_since)
        )
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


def update_sequence_if(
    database: pw.Database, sequence_id: uuid.UUID, etag: str, changes: Row
) -> bool:
    """Compare-and-set: apply the changes only if the stored etag is still this one. Of two
    writers that read the same etag, the second finds no row (PostgreSQL re-reads the row
    once the first commits), so exactly one wins."""
    query = SequenceRow.update(changes).where(
        (SequenceRow.id == sequence_id) & (SequenceRow.etag == etag)
    )
    return int(query.execute(database)) == 1


def replace_steps(database: pw.Database, sequence_id: uuid.UUID, steps: list[Row]) -> None:
    StepRow.delete().where(StepRow.sequence == sequence_id).execute(database)
    if steps:
        STEP_INSERT.run(database, steps)


def insert_revision(database: pw.Database, revision: Row) -> None:
    RevisionRow.insert(revision).execute(database)


def list_revisions(
    database: pw.Database, sequence_id: uuid.UUID, before: int | None, limit: int
) -> list[Row]:
    """A sequence's revisions newest first, starting below the revision before."""
    query: Any = RevisionRow.select().where(RevisionRow.sequence == sequence_id)
    if before is not None:
        query = query.where(RevisionRow.revision < before)
    rows = query.order_by(RevisionRow.revision.desc()).limit(limit).dicts()
    return list(rows.execute(database))


def get_revision(database: pw.Database, sequence_id: uuid.UUID, revision: int) -> Row | None:
    rows: Any = RevisionRow.select().where(
        (RevisionRow.sequence == sequence_id) & (RevisionRow.revision == revision)
    )
    found = list(rows.dicts().execute(database))
    return found[0] if found else None


def purge_deleted(database: pw.Database, before: dt.datetime) -> int:
    """Remove for good the sequences deleted before this time, with their steps and
    revisions (foreign keys cascade); returns how many sequences."""
    query = SequenceRow.delete().where(SequenceRow.deleted_at < before)
    return int(query.execute(database))


def _idempotency_key(caller: str, key: str) -> Any:
    return (IdempotencyRow.caller == caller) & (IdempotencyRow.key == key)


def find_idempotency(database: pw.Database, caller: str, key: str) -> Row | None:
    return IDEMPOTENCY_LOOKUP.one(database, caller, key)


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
