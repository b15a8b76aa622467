"""Write transactions: on SQLite, batched by one writer thread (group commit).

SQLite lets one writer in at a time and makes every commit durable with an fsync. Run one
transaction per create and the creates queue on the lock, each paying its own fsync (and
SQLite's busy handler, when it waits, sleeps in steps of up to 100 ms). So each process
hands its write work to a single writer thread, which runs whatever has queued in one
transaction, each piece in its own savepoint, and commits once: one fsync for the batch.
A caller hears back only after the commit that holds its work. PostgreSQL commits
concurrent transactions together by itself, so there the work runs in the caller's thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import peewee as pw

from comms import metrics

log = logging.getLogger(__name__)

MAX_BATCH = 64


def transactions(database: pw.Database) -> Callable[[Callable[[], Any]], Any]:
    """A function that runs work() in a committed write transaction and returns its result
    (or raises its exception, and then nothing of that work is stored)."""
    if isinstance(database, pw.SqliteDatabase):
        return GroupCommit(database)

    def run(work: Callable[[], Any]) -> Any:
        with _measured(1), database.connection_context(), database.atomic():
            return work()

    return run


class GroupCommit:
    def __init__(self, database: pw.Database) -> None:
        self._db = database
        # Writers of other server processes queue on this file lock, which wakes the next
        # one as soon as it is released; SQLite's own busy handler sleeps and polls instead
        # (p99 188 ms at 16 connections with two processes, against 34 ms with one).
        self._lock = os.open(f"{database.database}-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="writer", daemon=True).start()

    def __call__(self, work: Callable[[], Any]) -> Any:
        done: Future[Any] = Future()
        self._queue.put((work, done))
        return done.result()

    def _serve(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._commit(batch)

    def _commit(self, batch: list[tuple[Callable[[], Any], Future[Any]]]) -> None:
        outcomes: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            with (
                _measured(len(batch)),
                _locked(self._lock),
                self._db.connection_context(),
                self._db.atomic(),
            ):
                for work, done in batch:
                    try:
                        with self._db.atomic():  # a savepoint: a failure undoes only this work
                            outcomes.append((done, work(), None))
                    except Exception as error:  # answered to its own caller below
                        if not self._db.connection().in_transaction:
                            # SQLite rolled the whole transaction back (a full disk, an I/O
                            # error): the rest must not run in autocommit, each stored while
                            # its caller is told it failed.
                            raise _BatchLost(error) from error
                        outcomes.append((done, None, error))
        except _BatchLost as lost:
            self._fail(batch, lost.error)
            return
        except Exception as error:  # BEGIN or COMMIT failed: nothing of the batch is stored
            self._fail(batch, error)
            return
        for done, result, failure in outcomes:
            if failure is None:
                done.set_result(result)
            else:
                done.set_exception(failure)

    @staticmethod
    def _fail(batch: list[tuple[Callable[[], Any], Future[Any]]], error: BaseException) -> None:
        for _, done in batch:
            done.set_exception(error)


@contextlib.contextmanager
def _measured(creates: int) -> Iterator[None]:
    """A write transaction's size and time, committed or not, for the metrics."""
    metrics.BATCH_SIZE.observe(creates)
    started = time.perf_counter()
    try:
        yield
    finally:
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)


@contextlib.contextmanager
def _locked(descriptor: int) -> Iterator[None]:
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(descriptor, fcntl.LOCK_UN)


class _BatchLost(Exception):
    """The transaction of a batch is gone, and with it everything the batch had written."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error
