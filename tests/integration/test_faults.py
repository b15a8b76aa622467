"""Faults: crashes, restarts, store outages, slow clients and overload lose no acknowledged
create, leave no half-written one, and tell every caller what happened.

Short versions, a few seconds each; `make chaos` (bench/chaos.py) runs longer ones and prints
the figures. The stack is `comms serve` and Envoy as child processes (bench/stack.py), so
that either can be killed; bench/faults.py has the load, the faults and the check."""

from __future__ import annotations

import contextlib
import dataclasses
import select
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from bench import faults
from bench.faults import Answer, CreateLoad, GrpcCaller, HttpCaller
from bench.stack import RECONNECT_FAST, Stack, Store, running_stack
from comms.v1 import sequences_pb2 as pb
from comms.v1 import sequences_pb2_grpc as pb_grpc
from tests.conftest import STORES, fresh_database_url
from tests.integration.conftest import Envoy, free_port, gateway_settings

# What a caller is told when the gateway cannot reach a server, and when the server cannot
# reach its store.
UNAVAILABLE = {
    "error": "unavailable",
    "message": "the comms service is unavailable, try again later",
}
STORE_UNAVAILABLE = {"error": "unavailable", "message": "the store is unavailable; retry later"}


@pytest.fixture(params=STORES)
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """A fresh store; on PostgreSQL the server's connections carry an application_name of
    this test's own, so that a fault can end them and no one else's."""
    if request.param == "postgres":
        request.getfixturevalue("postgres_available")
    with fresh_database_url(request.param, tmp_path_factory) as url:
        if request.param == "postgres":
            url = faults.with_application_name(url, f"comms-faults-{uuid.uuid4().hex[:8]}")
        yield Store(request.param, url)


StartStack = Callable[..., Stack]


def _load(stack: Stack, grpc_clients: int = 2) -> CreateLoad:
    """A steady load of creates: 3 clients over HTTP through Envoy, and some over gRPC
    straight to the server."""
    return CreateLoad(
        token=stack.token,
        http_url=stack.http_url,
        http_clients=3,
        grpc_target=stack.grpc_target,
        grpc_clients=grpc_clients,
    )


@pytest.fixture
def start_stack(store: Store, tmp_path: Path) -> Iterator[StartStack]:
    """Starts `comms serve` and Envoy on the store with extra COMMS_* settings; both are
    stopped when the test ends, whatever it killed and restarted meanwhile."""
    with contextlib.ExitStack() as stacks:

        def start(instances: int = 1, **settings: str) -> Stack:
            return stacks.enter_context(
                running_stack(store, tmp_path, settings, instances=instances)
            )

        yield start


def _only(stores: list[str]) -> Callable[[Any], Any]:
    return pytest.mark.parametrize("store", stores, indirect=True)


def _check(stack: Stack, answers: list[Answer]) -> faults.Report:
    report = faults.check(stack.store, answers)
    print(report.summary())  # acknowledged vs stored, shown with pytest -s
    assert report.intact, report.summary()
    return report


def _statuses(answers: list[Answer]) -> set[str]:
    return {f"{a.path} {a.status}" for a in answers}


def _bodies(answers: list[Answer], status: str) -> set[str]:
    """The distinct bodies (or gRPC messages) of the answers with this status."""
    return {str(a.body) for a in answers if a.status == status}


def _names(stack: Stack) -> set[str]:
    return {name for (name,) in stack.store.query("SELECT name FROM sequences")}


# --- crashes and restarts ------------------------------------------------------------------


def test_kill_9_of_the_server_loses_no_acknowledged_create(start_stack: StartStack) -> None:
    """Under load, kill -9 the server (the only instance): HTTP callers get a JSON 503 and
    gRPC callers UNAVAILABLE while it is down; restarted on the same ports, traffic resumes
    through the same Envoy, which retried nothing; every create answered 201/OK is stored,
    whole."""
    stack = start_stack()
    envoy = stack.envoy.pid
    with _load(stack) as load:
        load.wait_for_more("201", 20)
        load.wait_for_more("OK", 10)
        faults.crash(stack.server)
        load.wait_for_more("503", 3)
        load.wait_for_more("UNAVAILABLE", 2)
        with GrpcCaller(f"127.0.0.1:{stack.http_port}", stack.token) as through_envoy:
            down = through_envoy.create("while down")
        stack.start_server()
        load.wait_for_more("201", 20)
        load.wait_for_more("OK", 10)
    answers = load.stop()

    assert down.status == "UNAVAILABLE"  # the message is Envoy's
    assert _statuses(answers) == {"http 201", "http 503", "grpc OK", "grpc UNAVAILABLE"}
    assert _bodies(answers, "503") <= {str(UNAVAILABLE)}
    _check(stack, answers)
    assert stack.envoy.pid == envoy


def test_kill_9_of_one_server_instance_loses_no_acknowledged_create(
    start_stack: StartStack,
) -> None:
    """Under load, kill -9 one of two server instances: its callers in flight get 503 /
    UNAVAILABLE, the other carries on alone, and takes its share again once it is back."""
    stack = start_stack(instances=2)
    with _load(stack) as load:
        load.wait_for_more("201", 20)
        faults.crash(stack.processes[1])
        load.wait_for_more("201", 20)
        stack.start_server(1)
        load.wait_for_more("201", 20)
        load.wait_for_more("OK", 10)
    answers = load.stop()

    assert _statuses(answers) <= {"http 201", "http 503", "grpc OK", "grpc UNAVAILABLE"}
    assert _bodies(answers, "503") <= {str(UNAVAILABLE)}
    _check(stack, answers)


def test_kill_9_of_envoy_loses_no_acknowledged_create(start_stack: StartStack) -> None:
    """Under load, kill -9 Envoy: HTTP callers lose their connection, gRPC callers of the
    server itself carry on; Envoy restarted on the same ports, HTTP resumes."""
    stack = start_stack()
    with _load(stack, grpc_clients=1) as load:
        load.wait_for_more("201", 20)
        stack.envoy.kill()
        stack.envoy.wait()
        load.wait_for_more(faults.NO_ANSWER, 3)
        load.wait_for_more("OK", 5)  # straight to the server: unaffected
        stack.start_envoy()
        load.wait_for_more("201", 20)
    answers = load.stop()

    assert _statuses(answers) == {"http 201", f"http {faults.NO_ANSWER}", "grpc OK"}
    _check(stack, answers)


def test_sigterm_under_load_answers_every_create_it_stores(start_stack: StartStack) -> None:
    """A graceful stop under load: the creates in flight commit and are answered, later ones
    are refused (503 / UNAVAILABLE), so no create is in doubt; the server exits 0."""
    stack = start_stack()
    with _load(stack) as load:
        load.wait_for_more("201", 20)
        load.wait_for_more("OK", 10)
        stack.server.send_signal(signal.SIGTERM)
        assert stack.server.wait(timeout=15) == 0
        load.wait_for_more("503", 2)
        stack.start_server()
        load.wait_for_more("201", 20)
    answers = load.stop()

    # A gRPC call that reaches the server just as it stops is dropped by grpc itself, with
    # CANCELLED, before it runs: the gateway tells its callers UNAVAILABLE instead.
    assert _statuses(answers) <= {
        "http 201", "http 503", "grpc OK", "grpc UNAVAILABLE", "grpc CANCELLED",
    }  # fmt: skip
    assert _bodies(answers, "503") <= {str(UNAVAILABLE)}
    assert _check(stack, answers).in_doubt == 0


# --- store outages -------------------------------------------------------------------------


@_only(["postgres"])
def test_postgres_connection_killed_mid_create(start_stack: StartStack) -> None:
    """pg_terminate_backend on the server's connection while a create waits inside its
    transaction: that caller gets 503 (not 500), nothing of it is stored, and the next
    create gets a new connection by itself."""
    stack = start_stack()
    with (
        HttpCaller(stack.http_url, stack.token) as http,
        GrpcCaller(stack.grpc_target, stack.token) as direct,
    ):
        with faults.writes_held(stack.store), futures.ThreadPoolExecutor(1) as pool:
            doomed = pool.submit(http.create, "doomed")
            _wait_until(lambda: faults.backends_waiting_for_a_lock(stack.store) == 1)
            assert faults.terminate_backends(stack.store) >= 1
            answer = doomed.result(timeout=10)
        after = [http.create("after"), direct.create("after g")]

    assert (answer.status, answer.body) == ("503", STORE_UNAVAILABLE)
    assert [a.status for a in after] == ["201", "OK"]
    assert _names(stack) == {"after", "after g"}
    _check(stack, [answer, *after])


@_only(["postgres"])
def test_postgres_connections_killed_under_load(start_stack: StartStack) -> None:
    stack = start_stack()
    with _load(stack) as load:
        for _ in range(5):
            load.wait_for_more("201", 10)
            faults.terminate_backends(stack.store)
        load.wait_for_more("201", 10)
        load.wait_for_more("OK", 5)
    answers = load.stop()

    assert _statuses(answers) <= {"http 201", "http 503", "grpc OK", "grpc UNAVAILABLE"}
    assert _bodies(answers, "503") <= {str(STORE_UNAVAILABLE)}
    assert _bodies(answers, "UNAVAILABLE") <= {STORE_UNAVAILABLE["message"]}
    _check(stack, answers)


@_only(["sqlite"])
def test_sqlite_locked_longer_than_the_busy_timeout(start_stack: StartStack) -> None:
    """Another writer holds SQLite's lock past COMMS_SQLITE_BUSY_TIMEOUT_MS: 503 / UNAVAILABLE
    and nothing stored; once it lets go, creates succeed again."""
    stack = start_stack(COMMS_SQLITE_BUSY_TIMEOUT_MS="100")
    with (
        HttpCaller(stack.http_url, stack.token) as http,
        GrpcCaller(stack.grpc_target, stack.token) as direct,
    ):
        with faults.writes_held(stack.store):
            refused = [http.create("locked"), direct.create("locked g")]
        after = [http.create("after"), direct.create("after g")]

    assert [(a.status, a.body) for a in refused] == [
        ("503", STORE_UNAVAILABLE),
        ("UNAVAILABLE", STORE_UNAVAILABLE["message"]),
    ]
    assert [a.status for a in after] == ["201", "OK"]
    assert _names(stack) == {"after", "after g"}
    _check(stack, refused + after)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted at the end."""
    try:
        with faults.small_disk(tmp_path / "disk", "2m") as disk:
            yield disk
    except faults.MountError as error:
        pytest.skip(f"{error}: without a tmpfs this test cannot fill a disk")


def test_a_full_disk_is_a_503_and_corrupts_nothing(small_disk: Path, tmp_path: Path) -> None:
    """SQLite on a small tmpfs, filled up: creates are refused with 503 / UNAVAILABLE (the
    server log says the disk is full), none half-written; with space again they succeed, and
    PRAGMA integrity_check finds nothing wrong."""
    store = Store("sqlite", f"sqlite:///{small_disk / 'comms.db'}")
    big = "x" * 10_000  # a description
    with (
        running_stack(store, tmp_path) as stack,
        HttpCaller(stack.http_url, stack.token) as http,
        GrpcCaller(stack.grpc_target, stack.token) as direct,
    ):
        filling = [http.create("before")]
        filler = faults.fill(small_disk, leave_bytes=256 * 1024)
        # Big creates until the disk is full: every one before is a 201.
        while filling[-1].status == "201" and len(filling) < 200:
            filling.append(http.create(f"filling {len(filling)}", description=big))
        full = [
            filling.pop(),
            http.create("still full", description=big),
            direct.create("still full g", description=big),
        ]
        filler.unlink()
        after = [http.create("after"), direct.create("after g")]

    assert [a.status for a in filling] == ["201"] * len(filling)
    assert [(a.status, a.body) for a in full] == [
        ("503", STORE_UNAVAILABLE),
        ("503", STORE_UNAVAILABLE),
        ("UNAVAILABLE", STORE_UNAVAILABLE["message"]),
    ]
    assert "database or disk is full" in (tmp_path / "server-0.log").read_text()
    assert [a.status for a in after] == ["201", "OK"]
    assert faults.integrity_check(small_disk / "comms.db") == "ok"
    report = faults.check(store, filling + full + after)
    print(report.summary())
    assert report.intact and report.in_doubt == 0, report.summary()
    assert _names(stack) == {a.name for a in filling + after}


# --- deadlines and slow clients ------------------------------------------------------------


@pytest.mark.parametrize("route", ["direct", "envoy"])
def test_a_deadline_that_passes_while_the_store_is_locked_commits_nothing(
    start_stack: StartStack, route: str
) -> None:
    """The store's write lock is held past the caller's 1 s deadline: the caller gets
    DEADLINE_EXCEEDED; when the lock goes, the server finds the deadline passed and rolls
    back. One process with one worker thread, so the next create runs only once the late one
    has ended."""
    stack = start_stack(COMMS_GRPC_WORKERS="1")
    target = stack.grpc_target if route == "direct" else f"127.0.0.1:{stack.http_port}"
    with GrpcCaller(target, stack.token) as caller:
        with faults.writes_held(stack.store):
            late = caller.create("late", timeout=1)
        follow = caller.create("follow")

    assert late.status == "DEADLINE_EXCEEDED"
    assert follow.status == "OK"
    assert _names(stack) == {"follow"}


@pytest.fixture(scope="module")
def impatient_envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envoy]:
    """An Envoy with short limits on slow and idle clients (its upstream is not needed)."""
    settings = dataclasses.replace(
        gateway_settings(tmp_path_factory.mktemp("envoy"), free_port()),
        gateway_headers_timeout=0.5,
        gateway_request_timeout=2,
        gateway_stream_idle_timeout=1,
        gateway_idle_timeout=0.5,
    )
    envoy = Envoy.start(settings)
    yield envoy
    envoy.stop()


REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n",
    b'{"error":"request_timeout","message":"the request was not received in time"}\n',
)
POST_HEAD = b"POST /v1/sequences HTTP/1.1\r\nHost: comms\r\nContent-Type: application/json\r\n"


def _talk(envoy: Envoy, first: bytes, trickle: bytes = b"", every: float = 0.2) -> bytes:
    """Send first, then one byte of trickle each `every` seconds until Envoy answers; all
    Envoy sends until it closes the connection."""
    with socket.create_connection(("127.0.0.1", envoy.settings.http_port), timeout=10) as sock:
        sock.sendall(first)
        for byte in trickle:
            if select.select([sock], [], [], every)[0]:
                break
            sock.sendall(bytes([byte]))
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
        return received


def _stat(envoy: Envoy, name: str) -> int:
    return faults.envoy_stat(envoy.settings.admin_port, f"http.comms.{name}")


@pytest.mark.parametrize(
    ("first", "trickle", "stat"),
    [
        (b"POST /v1/sequences HTTP/1.1\r\nHost: comms\r\n", b"", "downstream_rq_header_timeout"),
        (POST_HEAD + b"Content-Length: 100\r\n\r\n", b" " * 100, "downstream_rq_timeout"),
        (POST_HEAD + b"Content-Length: 100\r\n\r\n{", b"", "downstream_rq_idle_timeout"),
    ],
    ids=["headers too slow", "body too slow", "body stalls"],
)
def test_a_slow_client_is_cut_off_with_a_408(
    impatient_envoy: Envoy, first: bytes, trickle: bytes, stat: str
) -> None:
    before = _stat(impatient_envoy, stat)
    received = _talk(impatient_envoy, first, trickle)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(REQUEST_TIMEOUT[0]) and b"connection: close" in head, received
    assert body == REQUEST_TIMEOUT[1]
    assert _stat(impatient_envoy, stat) == before + 1


def test_an_idle_connection_is_closed(impatient_envoy: Envoy) -> None:
    before = _stat(impatient_envoy, "downstream_cx_idle_timeout")
    assert _talk(impatient_envoy, b"") == b""
    assert _stat(impatient_envoy, "downstream_cx_idle_timeout") == before + 1


# --- overload ------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["grpc", "http"])
def test_overload_is_shed_at_once_and_admitted_creates_are_stored(
    start_stack: StartStack, route: str
) -> None:
    """One process, two workers, at most four calls in flight: with the store's lock held, twelve
    concurrent creates fill the four places and the rest are refused at once (503 /
    RESOURCE_EXHAUSTED), not queued; let go, the admitted ones are stored. (Envoy's health
    checks may take a place too, so at least eight are shed.)"""
    stack = start_stack(COMMS_GRPC_WORKERS="2", COMMS_MAX_IN_FLIGHT="4")
    with contextlib.ExitStack() as closing, futures.ThreadPoolExecutor(12) as pool:
        callers = [
            closing.enter_context(
                HttpCaller(stack.http_url, stack.token) if route == "http"
                else GrpcCaller(stack.grpc_target, stack.token)
            )
            for _ in range(12)
        ]  # fmt: skip
        with faults.writes_held(stack.store):
            calls = [pool.submit(caller.create, f"c{i}") for i, caller in enumerate(callers)]
            _wait_until(lambda: sum(c.done() for c in calls) >= 8)
        answers = [c.result() for c in calls]

    admitted = "OK" if route == "grpc" else "201"
    shed = "RESOURCE_EXHAUSTED" if route == "grpc" else "503"
    statuses = [a.status for a in answers]
    assert set(statuses) == {admitted, shed}, statuses
    assert statuses.count(shed) >= 8
    assert all(
        a.body == ("Concurrent RPC limit exceeded!" if route == "grpc" else {
            "error": "unavailable", "message": "Concurrent RPC limit exceeded!"})
        for a in answers if a.status == shed
    )  # fmt: skip
    assert _check(stack, answers).stored == statuses.count(admitted)


def _wait_until(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition did not come true in time")
        time.sleep(0.02)


# --- the life of a sequence under a crash ----------------------------------------------------


class _Mover:
    """Takes one sequence round activate, pause, edit (name and steps), resume, pause ... over
    its own gRPC channel, each call with the etag of the last state it knows. After a failed
    call it reads the sequence again (the call may have committed) and goes on from what is
    stored. Records the answers acknowledged and the states read after a failure."""

    def __init__(self, target: str, token: str | None, sequence_id: str) -> None:
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.use_local_subchannel_pool", 1), *RECONNECT_FAST]
        )
        self.stub = pb_grpc.SequenceServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.known = self.read(sequence_id)
        self.acknowledged: list[Any] = []
        self.failures = 0
        self.stopping = threading.Event()

    def read(self, sequence_id: str) -> Any:
        while True:
            try:
                request = pb.GetSequenceRequest(id=sequence_id)
                return self.stub.GetSequence(request, metadata=self.metadata, timeout=5)
            except grpc.RpcError:
                time.sleep(0.05)  # the server is down: wait for it to come back

    def _call(self, n: int, edited: bool) -> Any:
        sequence_id, etag, status = self.known.id, self.known.etag, self.known.status
        if status == pb.paused and not edited:
            steps = [
                pb.Step(position=p, channel=pb.sms, template_key=f"k{n}", delay_minutes=p)
                for p in range(n % 3 + 1)
            ]
            request = pb.UpdateSequenceRequest(
                sequence=pb.Sequence(id=sequence_id, etag=etag, name=f"edit {n}", steps=steps),
                update_mask=field_mask_pb2.FieldMask(paths=["name", "steps"]),
            )
            return self.stub.UpdateSequence(request, metadata=self.metadata, timeout=5)
        method, request_type = {
            pb.draft: ("ActivateSequence", pb.ActivateSequenceRequest),
            pb.active: ("PauseSequence", pb.PauseSequenceRequest),
            pb.paused: ("ResumeSequence", pb.ResumeSequenceRequest),
        }[status]
        call = getattr(self.stub, method)
        return call(request_type(id=sequence_id, etag=etag), metadata=self.metadata, timeout=5)

    def run(self) -> None:
        n, edited = 0, False
        while not self.stopping.is_set():
            n += 1
            before = self.known
            try:
                self.known = self._call(n, edited)
                self.acknowledged.append(self.known)
            except grpc.RpcError:
                self.failures += 1
                self.known = self.read(before.id)
            # Paused: edit, then resume (once edited, or if the stored state says so).
            edited = self.known.status == pb.paused and self.known.etag != before.etag
            edited = edited and before.status == pb.paused


def test_kill_9_during_moves_loses_no_acknowledged_move(start_stack: StartStack) -> None:
    """Writers take sequences round activate, pause, edit, resume under load, each call
    carrying the etag of the state before it; kill -9 the server, restart it, go on. Every
    acknowledged answer is what was stored (the next call, made with its etag, succeeded, or
    a read finds it), and what is stored is whole: steps, revision and revision rows agree."""
    stack = start_stack()
    creator = GrpcCaller(stack.grpc_target, stack.token)
    created = [creator.create(f"mover {i}") for i in range(4)]
    creator.close()
    assert {a.status for a in created} == {"OK"}
    movers = [_Mover(stack.grpc_target, stack.token, a.sequence_id) for a in created]
    threads = [threading.Thread(target=m.run) for m in movers]
    for thread in threads:
        thread.start()

    def acknowledged() -> int:
        return sum(len(m.acknowledged) for m in movers)

    try:
        _wait_until(lambda: acknowledged() >= 40)
        faults.crash(stack.server)
        stack.start_server()
        before = acknowledged()
        _wait_until(lambda: acknowledged() >= before + 40, timeout=60)
    finally:
        for mover in movers:
            mover.stopping.set()
        for thread in threads:
            thread.join()

    assert sum(m.failures for m in movers) >= 1, "the crash interrupted no move"
    for mover in movers:
        # An etag of its own for each acknowledged change: no answer given twice for one.
        assert len({a.etag for a in mover.acknowledged}) == len(mover.acknowledged)
        stored = mover.read(mover.known.id)
        assert stored == mover.known  # the last acknowledged (or read) state is what is stored
        where = f"WHERE sequence_id = '{_stored_id(stack, stored.id)}'"
        revisions = stack.store.query(f"SELECT revision FROM sequence_revisions {where}")
        assert sorted(r for (r,) in revisions) == list(range(1, stored.revision + 1))
        assert stored.revision >= 2  # edits and resumes went on after the restart
        steps = stack.store.query(f"SELECT template_key FROM steps {where}")
        assert sorted(k for (k,) in steps) == sorted(s.template_key for s in stored.steps)
        mover.channel.close()


def _stored_id(stack: Stack, sequence_id: str) -> str:
    """The id as the store writes it (SQLite: 32 hex digits; PostgreSQL: a uuid)."""
    return uuid.UUID(sequence_id).hex if stack.store.kind == "sqlite" else sequence_id
