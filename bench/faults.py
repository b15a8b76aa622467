"""Faults, and the check that they lose nothing: used by `make chaos` (bench/chaos.py) for long
runs and by tests/integration/test_faults.py for short ones.

- CreateLoad: closed-loop creates on several connections, over HTTP through Envoy and over
  native gRPC, each create with a name of its own, recording every answer (or its absence).
- check(): the answers against the rows stored. Every acknowledged create (201 / OK) must be
  stored, with all its steps; no sequence may lack a step nor a step its sequence; no create
  may be stored twice (what a blind retry would do). A create stored whose answer was an
  error or never came is "in doubt": allowed after a crash (the caller cannot know, and
  retries with an Idempotency-Key), never after a graceful stop.
- The faults: kill -9 of a server instance, PostgreSQL backends terminated, writes
  held behind a lock, a full disk (a small tmpfs)."""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import grpc
import psycopg2
from google.protobuf import json_format

from bench.load import BODY, STEPS_PER_CREATE
from bench.stack import RECONNECT_FAST, Store, process_tree
from comms.v1 import sequences_pb2 as pb
from comms.v1 import sequences_pb2_grpc as pb_grpc

NO_ANSWER = "no answer"  # the connection failed or was cut before a whole response came
# The application_name of the connections a fault is not meant to hit (ours, not the server's).
OBSERVER = "comms-faults-observer"


@dataclass(frozen=True)
class Answer:
    name: str  # unique per create: how a stored row is matched with its answer
    path: str  # "http" (through Envoy) or "grpc" (native)
    status: str  # HTTP status ("201"), gRPC code name ("OK"), or NO_ANSWER
    body: Any  # the JSON body (HTTP), the status message (gRPC), or the error
    sequence_id: str  # of an acknowledged create, else ""
    seconds: float  # from sending to the answer
    replayed: bool = False  # an Idempotency-Key's earlier create, answered again

    @property
    def acknowledged(self) -> bool:
        return self.status in ("201", "OK")


class Caller:
    """Sends creates one at a time and says how each was answered; closes with `with`."""

    def create(self, name: str, **fields: Any) -> Answer:
        """A create named `name`, of BODY with these fields changed."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class HttpCaller(Caller):
    """POST /v1/sequences through Envoy on one keep-alive connection (a new one after a
    failure)."""

    def __init__(self, url: str, token: str | None, timeout: float = 10.0) -> None:
        self._url = urlsplit(url)
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def create(self, name: str, idempotency_key: str = "", **fields: Any) -> Answer:
        data = json.dumps(BODY | fields | {"name": name})
        headers = self._headers | ({"Idempotency-Key": idempotency_key} if idempotency_key else {})
        started = time.perf_counter()
        replayed = False
        try:
            if self._connection is None:
                self._connection = http.client.HTTPConnection(
                    self._url.hostname or "", self._url.port, timeout=self._timeout
                )
            self._connection.request("POST", self._url.path, data, headers)
            response = self._connection.getresponse()
            raw = response.read()
            status, body = str(response.status), _decoded(response, raw)
            replayed = response.getheader("idempotent-replayed") == "true"
            if response.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as error:
            status, body = NO_ANSWER, f"{type(error).__name__}: {error}"
            self.close()
        sequence_id = body.get("id", "") if status == "201" and isinstance(body, dict) else ""
        seconds = time.perf_counter() - started
        return Answer(name, "http", status, body, sequence_id, seconds, replayed)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = None


def _decoded(response: http.client.HTTPResponse, raw: bytes) -> Any:
    if response.getheader("content-type") == "application/json":
        with contextlib.suppress(ValueError):
            return json.loads(raw)
    return raw.decode(errors="replace")


class GrpcCaller(Caller):
    """CreateSequence over a channel of its own (its own TCP connection), which notices a
    restarted server within 0.1 s."""

    def __init__(self, target: str, token: str | None, timeout: float = 10.0) -> None:
        options = [("grpc.use_local_subchannel_pool", 1), *RECONNECT_FAST]
        self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.SequenceServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout

    def create(self, name: str, timeout: float | None = None, **fields: Any) -> Answer:
        body = BODY | fields | {"name": name}
        request = json_format.ParseDict(body, pb.CreateSequenceRequest())
        started = time.perf_counter()
        try:
            reply = self._stub.CreateSequence(
                request, metadata=self._metadata, timeout=timeout or self._timeout
            )
            status, body, sequence_id = "OK", "", reply.id
        except grpc.RpcError as error:
            status, body, sequence_id = error.code().name, error.details(), ""
        return Answer(name, "grpc", status, body, sequence_id, time.perf_counter() - started)

    def close(self) -> None:
        self._channel.close()


class CreateLoad:
    """Valid creates of STEPS_PER_CREATE steps, each client sending its next one when the last
    is answered, until stopped; each client then finishes the create it has in flight. After
    a failed create a client waits `backoff` seconds, as a polite caller would."""

    def __init__(
        self,
        *,
        token: str | None,
        http_url: str = "",
        http_clients: int = 0,
        grpc_target: str = "",
        grpc_clients: int = 0,
        timeout: float = 10.0,
        backoff: float = 0.02,
    ) -> None:
        self._backoff = backoff
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._answers: list[Answer] = []
        tag = uuid.uuid4().hex[:8]
        callers: list[tuple[str, Caller]] = [
            (f"{tag}-h{i}", HttpCaller(http_url, token, timeout)) for i in range(http_clients)
        ] + [(f"{tag}-g{i}", GrpcCaller(grpc_target, token, timeout)) for i in range(grpc_clients)]
        self._threads = [
            threading.Thread(target=self._client, args=caller, daemon=True) for caller in callers
        ]

    def __enter__(self) -> CreateLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> list[Answer]:
        """Stop sending; wait for the creates in flight to be answered; every answer."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
        return self.answers()

    def answers(self) -> list[Answer]:
        with self._lock:
            return list(self._answers)

    def wait_for(
        self, condition: Callable[[list[Answer]], bool], what: str, timeout: float = 30
    ) -> None:
        """Until condition(answers so far) holds; TimeoutError naming `what` if it never does."""
        deadline = time.monotonic() + timeout
        while not condition(self.answers()):
            if time.monotonic() > deadline:
                counts = Counter(f"{a.path} {a.status}" for a in self.answers())
                raise TimeoutError(f"no {what} within {timeout:g} s; answers: {dict(counts)}")
            time.sleep(0.01)

    def wait_for_more(self, status: str, count: int, timeout: float = 30) -> None:
        """Until `count` more answers with this status (on any path) than now."""
        start = sum(a.status == status for a in self.answers())
        self.wait_for(
            lambda answers: sum(a.status == status for a in answers) >= start + count,
            f"{count} more {status} answers",
            timeout,
        )

    def _client(self, prefix: str, caller: Caller) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                answer = caller.create(f"{prefix}-{n}")
                n += 1
                with self._lock:
                    self._answers.append(answer)
                if not answer.acknowledged:
                    self._stop.wait(self._backoff)
        finally:
            caller.close()


# --- the check -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """Answers against rows. `intact` is what every fault must leave true."""

    attempted: int
    acknowledged: int
    stored: int  # sequences stored under the names of this load
    in_doubt: int  # stored, but answered with an error or not at all
    lost: list[str]  # acknowledged, but not stored (or stored under another id)
    partial: list[str]  # sequence ids stored without all their steps
    orphan_steps: int  # steps whose sequence is not stored
    duplicates: list[str]  # names stored more than once
    unexplained: list[str]  # stored names that were never sent
    statuses: Counter[str] = field(default_factory=Counter)  # "http 201", "grpc OK", ...

    @property
    def intact(self) -> bool:
        return not (
            self.lost or self.partial or self.orphan_steps or self.duplicates or self.unexplained
        )

    def summary(self) -> str:
        problems = [
            f"{label} {len(items)}: {items[:5]}"
            for label, items in (
                ("LOST", self.lost),
                ("PARTIAL", self.partial),
                ("DUPLICATED", self.duplicates),
                ("UNEXPLAINED", self.unexplained),
            )
            if items
        ]
        if self.orphan_steps:
            problems.append(f"ORPHAN STEPS {self.orphan_steps}")
        return (
            f"attempted {self.attempted}, acknowledged {self.acknowledged}, "
            f"stored {self.stored} ({self.in_doubt} in doubt); "
            + ("; ".join(problems) if problems else "nothing lost, nothing partial")
            + f"; answers {dict(sorted(self.statuses.items()))}"
        )


def check(store: Store, answers: list[Answer]) -> Report:
    rows = store.query(
        "SELECT s.id, s.name, (SELECT count(*) FROM steps t WHERE t.sequence_id = s.id)"
        " FROM sequences s"
    )
    ((orphans,),) = store.query(
        "SELECT count(*) FROM steps t"
        " WHERE NOT EXISTS (SELECT 1 FROM sequences s WHERE s.id = t.sequence_id)"
    )
    # SQLite keeps ids as 32 hex digits, PostgreSQL as uuid: compare them as UUIDs.
    stored: dict[str, list[uuid.UUID]] = {}
    for sequence_id, name, _ in rows:
        stored.setdefault(name, []).append(uuid.UUID(str(sequence_id)))
    sent = {a.name: a for a in answers}
    ours = {name: ids for name, ids in stored.items() if name in sent}
    acknowledged = [a for a in answers if a.acknowledged]
    return Report(
        attempted=len(answers),
        acknowledged=len(acknowledged),
        stored=sum(len(ids) for ids in ours.values()),
        in_doubt=sum(1 for name in ours if not sent[name].acknowledged),
        lost=[a.name for a in acknowledged if ours.get(a.name) != [uuid.UUID(a.sequence_id)]],
        partial=[str(sequence_id) for sequence_id, _, steps in rows if steps != STEPS_PER_CREATE],
        orphan_steps=int(orphans),
        duplicates=[name for name, ids in stored.items() if len(ids) > 1],
        unexplained=[name for name in stored if name not in sent],
        statuses=Counter(f"{a.path} {a.status}" for a in answers),
    )


# --- the faults ----------------------------------------------------------------------------


def crash(process: subprocess.Popen[bytes]) -> None:
    """kill -9 of a process and every process under it (a Patroni node and its PostgreSQL),
    the children first: a parent's death alone might only SIGTERM them, a graceful stop."""
    tree = process_tree(process.pid)
    for pid in reversed(tree):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()
    while any(_alive(pid) for pid in tree[1:]):
        time.sleep(0.01)  # until the kernel has let go of their ports


def _alive(pid: int) -> bool:
    """Not yet dead nor a zombie."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def with_application_name(url: str, name: str) -> str:
    """A PostgreSQL URL whose connections carry this application_name (psycopg2 and
    the server pass the URL's query parameters on to libpq): how a fault finds the server's
    connections, and only them, on a PostgreSQL that others use too."""
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


def _server_backends(store: Store, condition: str, select: str) -> int:
    """count(select) over this database's connections that carry the application_name of
    store.url (the server's), never our own or anyone else's."""
    (name,) = parse_qs(urlsplit(store.url).query)["application_name"]
    with contextlib.closing(psycopg2.connect(store.url, application_name=OBSERVER)) as admin:
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(
                f"SELECT count({select}) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = %s"
                f" AND pid <> pg_backend_pid() AND {condition}",
                (name,),
            )
            ((count,),) = cursor.fetchall()
    return int(count)


def terminate_backends(store: Store) -> int:
    """pg_terminate_backend on the server's connections; how many there were."""
    return _server_backends(store, "true", "pg_terminate_backend(pid)")


def backends_waiting_for_a_lock(store: Store) -> int:
    return _server_backends(store, "wait_event_type = 'Lock'", "*")


@contextlib.contextmanager
def writes_held(store: Store) -> Iterator[None]:
    """Another writer holds the store's write lock until the block ends: SQLite's (BEGIN
    IMMEDIATE), or in PostgreSQL a lock on the sequences table that every insert waits for.
    Reads go on."""
    if store.kind == "sqlite":
        connection = sqlite3.connect(urlsplit(store.url).path, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            yield
            connection.execute("ROLLBACK")
        finally:
            connection.close()
        return
    with contextlib.closing(psycopg2.connect(store.url, application_name=OBSERVER)) as holder:
        with holder.cursor() as cursor:
            cursor.execute("LOCK TABLE sequences IN EXCLUSIVE MODE")
        yield
        holder.rollback()


def envoy_stat(admin_port: int, name: str) -> int:
    """One counter from Envoy's admin /stats, e.g. cluster.comms_grpc.upstream_rq_retry."""
    url = f"http://127.0.0.1:{admin_port}/stats?filter=^{name}$"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    raise KeyError(f"Envoy has no stat {name!r}")


class MountError(RuntimeError):
    """This machine does not let us mount a tmpfs (not root, or no CAP_SYS_ADMIN)."""


@contextlib.contextmanager
def small_disk(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` ("2m") mounted on directory for the block: a disk that fills up."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        raise MountError(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def fill(directory: Path, leave_bytes: int) -> Path:
    """A file that takes all the free space of directory's filesystem but leave_bytes (or
    all of it, if the filesystem runs out first)."""
    path = directory / "filler"
    stat = os.statvfs(directory)
    size = max(0, stat.f_bavail * stat.f_frsize - leave_bytes)
    chunk = b"\0" * (1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while size > 0:
            size -= os.write(fd, chunk[: min(size, len(chunk))])
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return path


def integrity_check(path: Path) -> str:
    """SQLite's PRAGMA integrity_check: "ok", or what is wrong."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return "; ".join(row[0] for row in connection.execute("PRAGMA integrity_check"))
