"""Group commit on SQLite: each piece of work stands or falls alone, unless the store drops
the whole transaction, and then no caller is told a stored create failed."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

import peewee as pw
import pytest

from comms import db, writer


@pytest.fixture
def sqlite(tmp_path: Path) -> Any:
    database = db.prepare(f"sqlite:///{tmp_path / 'w.db'}")
    with database.connection_context():
        database.execute_sql("CREATE TABLE t (v TEXT NOT NULL)")
    yield database
    database.close_all()


def _insert(database: pw.Database, value: str) -> Any:
    def work() -> str:
        database.execute_sql("INSERT INTO t (v) VALUES (?)", (value,))
        return value

    return work


def _stored(database: pw.Database) -> list[str]:
    with database.connection_context():
        return [v for (v,) in database.execute_sql("SELECT v FROM t ORDER BY v").fetchall()]


def _outcome(done: Future[Any]) -> Any:
    error = done.exception()
    return type(error).__name__ if error else done.result()


def test_a_failure_undoes_only_its_own_work(sqlite: pw.Database) -> None:
    def broken() -> None:
        sqlite.execute_sql("INSERT INTO t (v) VALUES (?)", ("half",))
        raise pw.IntegrityError("no")

    batch = [(_insert(sqlite, "a"), Future()), (broken, Future()), (_insert(sqlite, "b"), Future())]
    writer.GroupCommit(sqlite)._commit(batch)
    assert [_outcome(done) for _, done in batch] == ["a", "IntegrityError", "b"]
    assert _stored(sqlite) == ["a", "b"]


def test_a_transaction_the_store_dropped_fails_the_whole_batch(sqlite: pw.Database) -> None:
    def drops_the_transaction() -> None:
        # What SQLite does itself on a full disk or an I/O error mid-statement.
        sqlite.connection().execute("ROLLBACK")
        raise pw.OperationalError("database or disk is full")

    batch = [
        (_insert(sqlite, "a"), Future()),
        (drops_the_transaction, Future()),
        (_insert(sqlite, "b"), Future()),
    ]
    writer.GroupCommit(sqlite)._commit(batch)
    assert [_outcome(done) for _, done in batch] == ["OperationalError"] * 3
    assert _stored(sqlite) == []
