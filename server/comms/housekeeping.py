"""What the server forgets on its own, hourly: idempotency keys past their retention, and
sequences deleted more than DELETED_RETENTION ago (their steps and revisions with them)."""

from __future__ import annotations

import datetime as dt
import logging
import threading

import peewee as pw

from comms import convert, store
from comms.service import DELETED_RETENTION, IDEMPOTENCY_RETENTION

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 3600  # what is due outlives its time by at most this


def sweep(database: pw.Database, now: dt.datetime) -> tuple[int, int]:
    """Forget what is due at now; returns (idempotency keys, sequences) removed."""
    with database.connection_context(), database.atomic():
        keys = store.purge_idempotency(database, now - IDEMPOTENCY_RETENTION)
        sequences = store.purge_deleted(database, now - DELETED_RETENTION)
    if keys:
        log.info("forgot %d idempotency keys older than %s", keys, IDEMPOTENCY_RETENTION)
    if sequences:
        log.info("purged %d sequences deleted over %s ago", sequences, DELETED_RETENTION)
    return keys, sequences


def _run(database: pw.Database, interval: float, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            sweep(database, convert.utc_now())
        except pw.DatabaseError as error:
            log.warning("housekeeping failed, tried again in %.0f s: %s", interval, error)
        stop.wait(interval)


def start(database: pw.Database, interval: float = INTERVAL_SECONDS) -> threading.Event:
    """Sweep now and then every interval seconds, in a daemon thread, until the returned
    event is set."""
    stop = threading.Event()
    threading.Thread(
        target=_run, args=(database, interval, stop), daemon=True, name="housekeeping"
    ).start()
    return stop
