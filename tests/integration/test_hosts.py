"""Several hosts: Envoy on 127.0.0.1 in front of `comms serve` instances on 127.0.0.2 and
127.0.0.3 (each one process on one address, knowing nothing of the other), sharing only
PostgreSQL. Both answer; with one killed the other answers everything; restarted, it takes
its share again. Every 127.0.0.x address is local on Linux, so these are real separate
addresses on one machine."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from bench import faults
from bench.faults import Answer, HttpCaller
from bench.stack import Stack, Store, running_stack, server_port
from comms import db
from tests.conftest import POSTGRES_URL, fresh_database_url

HOSTS = ("127.0.0.2", "127.0.0.3")


@pytest.fixture
def stack(
    postgres_available: None, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with (
        fresh_database_url("postgres", tmp_path_factory) as url,
        running_stack(Store("postgres", url), tmp_path, hosts=HOSTS, instances=2) as stack,
    ):
        yield stack


def _hosts(stack: Stack) -> dict[str, tuple[bool, int]]:
    """Envoy's view of each upstream, by host:port: whether it is in rotation (no health
    check nor outlier detection against it), and the calls it answered."""
    url = f"http://127.0.0.1:{stack.admin_port}/clusters?format=json"
    with urllib.request.urlopen(url, timeout=5) as answer:
        clusters = json.load(answer)["cluster_statuses"]
    (cluster,) = [c for c in clusters if c["name"] == "comms_grpc"]
    found = {}
    for host in cluster["host_statuses"]:
        socket_address = host["address"]["socket_address"]
        stats = {s["name"]: int(s.get("value", 0)) for s in host["stats"]}
        failed = [flag for flag, on in host["health_status"].items() if "failed" in flag and on]
        found[f"{socket_address['address']}:{socket_address['port_value']}"] = (
            not failed,
            stats.get("rq_success", 0),
        )
    return found


def _addresses(stack: Stack) -> list[str]:
    return [f"{host}:{port}" for host, port in stack.servers]


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {what} within {timeout:g} s")
        time.sleep(0.05)


def _creates(stack: Stack, prefix: str, count: int) -> list[Answer]:
    with HttpCaller(stack.http_url, stack.token) as http:
        return [http.create(f"{prefix}-{i}") for i in range(count)]


def test_each_server_binds_its_own_address_only(stack: Stack) -> None:
    for host, port in stack.servers:
        with socket.create_connection((host, port), timeout=2):
            pass
        with pytest.raises(ConnectionRefusedError), socket.socket() as other:
            other.connect(("127.0.0.1", port))
    logs = [(stack.workdir / f"server-{i}.log").read_text() for i in range(len(stack.servers))]
    for address, log in zip(_addresses(stack), logs, strict=True):
        assert f"gRPC server listening on {address} (store: " in log


def test_the_gateway_spreads_calls_over_both_hosts(stack: Stack) -> None:
    answers = _creates(stack, "spread", 40)

    assert [a.status for a in answers] == ["201"] * 40
    seen = _hosts(stack)
    assert sorted(seen) == sorted(_addresses(stack))
    assert sum(calls for _, calls in seen.values()) == 40
    assert all(calls > 0 for _, calls in seen.values()), seen
    assert faults.check(stack.store, answers).stored == 40


def test_with_one_host_killed_the_other_answers_and_the_first_comes_back(stack: Stack) -> None:
    killed = _addresses(stack)[0]
    before = _creates(stack, "before", 10)
    faults.crash(stack.processes[0])
    # Until Envoy sets it aside (after 3 refused calls in a row, or 3 missed health
    # checks), a call sent to the dead host is refused before it is sent and tried on the
    # other host; one already on a connection to it as it died is 503 (nothing stored).
    during = _creates(stack, "during", 10)
    _wait_until(lambda: not _hosts(stack)[killed][0], f"{killed} unhealthy")
    alone = _creates(stack, "alone", 20)
    stack.start_server(0)
    _wait_until(lambda: _hosts(stack)[killed][0], f"{killed} healthy again")
    served = _hosts(stack)[killed][1]
    after = _creates(stack, "after", 20)

    assert [a.status for a in before + alone + after] == ["201"] * 50
    assert {a.status for a in during} <= {"201", "503"}
    assert sum(a.status == "503" for a in during) <= 3
    assert _hosts(stack)[killed][1] > served  # its share again
    report = faults.check(stack.store, before + during + alone + after)
    assert report.intact, report.summary()
    assert report.in_doubt == 0
    assert report.stored == report.acknowledged


def test_the_store_url_may_list_several_hosts(postgres_available: None) -> None:
    """libpq's multi-host form reaches the server: a host where nothing listens is skipped,
    and target_session_attrs=read-write takes the one that accepts writes."""
    parts = urlsplit(POSTGRES_URL)
    dead = f"127.0.0.1:{server_port()}"
    netloc = f"{parts.username}@{dead},{parts.hostname}:{parts.port or 5432}"
    url = urlunsplit(parts._replace(netloc=netloc, query="target_session_attrs=read-write"))
    database = db.open_database(url, max_connections=1)
    try:
        with database.connection_context():
            ((port, read_only),) = database.execute_sql(
                "SELECT inet_server_port(), current_setting('transaction_read_only')"
            ).fetchall()
    finally:
        database.close_all()
    assert (port, read_only) == (parts.port or 5432, "off")
