"""What the server forgets on its own, hourly: idempotency keys past their retention, and
sequences deleted more than DELETED_RETENTION ago (their steps and revisions with them)."""

from __future__ import annotations

import datetime as dt
import logging
import threading

import peewee as pw

from comms import convert, idempotency, store
from comms.service import DELETED_RETENTION

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 3600  # what is due outlives its time by at most this


def sweep(database: pw.Database, now: dt.datetime) -> tuple[int, int]:
    """Forget what is due at now; returns (idempotency keys, sequences) removed."""
    with database.connection_context(), database.atomic():
        keys = store.purge_idempotency(database, now - idempotency.RETENTION)
        sequences = store.purge_deleted(database, now - DELETED_RETENTION)
    if keys:
        log.info("forgot %d idempotency keys older than %s", keys, idempotency.RETENTION)
    if sequences:
        log.info("purged %d sequences deleted over %s ago", sequences, DELETED_RETENTION)
    return keys, sequences


class Sweeper:
    """Sweeps now and then every interval seconds, in a daemon thread, until stopped."""

    def __init__(self, database: pw.Database, interval: float = INTERVAL_SECONDS) -> None:
        self._database, self._interval = database, interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="housekeeping")
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                sweep(self._database, convert.utc_now())
            except pw.PeeweeException as error:  # the store is down: try again next time
                log.warning("housekeeping failed, tried again in %.0f s: %s", self._interval, error)
            self._stopping.wait(self._interval)

    def stop(self) -> None:
        """Stop, once a sweep under way has finished."""
        self._stopping.set()
        self._thread.join()
