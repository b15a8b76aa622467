"""The stack under test as separate processes: `comms serve` instances and Envoy (`comms
gateway`) in front of them, on free ports and a fresh database; and what /proc says about
each of them."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import cycle, islice
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import psycopg2
from grpc_health.v1 import health_pb2, health_pb2_grpc

COMMS = str(Path(sys.executable).parent / "comms")
DEFAULT_POSTGRES_URL = os.environ.get(
    "COMMS_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test"
)
_TICKS = os.sysconf("SC_CLK_TCK")
# gRPC channel options for a client that should notice a restarted server at once.
RECONNECT_FAST = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 100),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_port(host: str = "127.0.0.1") -> int:
    """A free port on host for a server. It is taken below the kernel's range of ephemeral
    ports, where no client connection can take it before the server binds it: in that range
    one did, and a server failed to start again and again."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(10000, max(10001, low - 1))
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {host} below {low}")


# --- /proc ---------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat from field 3 (state) on: the command name may hold spaces."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """pid and its live descendants (a server of several processes is measured whole)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(
                    int(entry.name)
                )
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class Usage:
    """One look at a process tree."""

    cpu_seconds: float  # user + system, of every process in it and the children they reaped
    peak_rss_kib: int  # VmHWM, summed over its processes
    rss_kib: int  # VmRSS now, summed
    processes: int


def usage(*pids: int) -> Usage:
    """The process trees of these pids together (several server instances are summed)."""
    cpu = peak = rss = count = 0
    for member in (each for pid in pids for each in process_tree(pid)):
        with contextlib.suppress(OSError):  # it may just have exited
            fields = _stat_fields(member)
            cpu += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
            peak += _status_kib(member, "VmHWM")
            rss += _status_kib(member, "VmRSS")
            count += 1
    return Usage(cpu / _TICKS, peak, rss, count)


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user
    return (total - idle) / _TICKS, total / _TICKS


# --- the database --------------------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    kind: str  # "sqlite" or "postgres"
    url: str  # what the server gets as COMMS_DATABASE_URL

    def rows(self) -> tuple[int, int]:
        """(sequences, steps) stored."""
        query = "SELECT (SELECT count(*) FROM sequences), (SELECT count(*) FROM steps)"
        ((sequences, steps),) = self.query(query)
        return int(sequences), int(steps)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """The rows a read-only query answers, on a connection of its own."""
        if self.kind == "sqlite":
            with contextlib.closing(sqlite3.connect(urlsplit(self.url).path)) as connection:
                return connection.execute(sql).fetchall()
        with contextlib.closing(psycopg2.connect(self.url)) as connection:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                rows: list[tuple[Any, ...]] = cursor.fetchall()
            connection.rollback()
        return rows

    def backend_cpu(self) -> dict[int, float]:
        """PostgreSQL: CPU seconds so far of each backend process serving this database (the
        server's pooled connections). Empty for SQLite, whose work is done in the server."""
        if self.kind == "sqlite":
            return {}
        with contextlib.closing(psycopg2.connect(self.url)) as connection:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                pids = [int(pid) for (pid,) in cursor.fetchall()]
            connection.rollback()
        found = {}
        for pid in pids:
            with contextlib.suppress(OSError):
                found[pid] = usage(pid).cpu_seconds
        return found

    def version(self) -> str:
        if self.kind == "sqlite":
            return f"SQLite {sqlite3.sqlite_version}"
        with contextlib.closing(psycopg2.connect(self.url)) as connection:
            with connection.cursor() as cursor:
                cursor.execute("SHOW server_version")
                (version,) = cursor.fetchone()
            connection.rollback()
        return f"PostgreSQL {version}"


@contextlib.contextmanager
def fresh_store(kind: str, workdir: Path, postgres_url: str) -> Iterator[Store]:
    """An empty store: a new SQLite file in workdir, or a new PostgreSQL database (dropped
    afterwards) on the server that postgres_url names."""
    if kind == "sqlite":
        yield Store(kind, f"sqlite:///{workdir / 'comms.db'}")
        return
    name = f"comms_bench_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(postgres_url, connect_timeout=5)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
        try:
            parts = urlsplit(postgres_url)
            yield Store(kind, urlunsplit(parts._replace(path=f"/{name}")))
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        admin.close()


# --- the processes -------------------------------------------------------------------------


@dataclass
class Stack:
    store: Store
    servers: list[tuple[str, int]]  # the instances' addresses, as the gateway lists them
    http_port: int
    admin_port: int
    processes: list[subprocess.Popen[bytes]]  # one `comms serve` per address in servers
    envoy: subprocess.Popen[bytes]
    token: str | None  # a bearer token the server accepts, if it asks for one
    env: dict[str, str]  # what every process runs with (each server also its own address)
    workdir: Path  # where server-<i>.log and envoy.log are written
    access_log: bool = False  # Envoy's access log kept too, in access.log

    @property
    def server(self) -> subprocess.Popen[bytes]:
        """The first instance (most stacks have one)."""
        return self.processes[0]

    @property
    def grpc_target(self) -> str:
        return f"{self.servers[0][0]}:{self.servers[0][1]}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1/sequences"

    def server_pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def start_server(self, index: int = 0) -> None:
        """Start instance `index` again, on its address and store (after a crash or a stop)."""
        self.processes[index] = _spawn_server(self.env, self.servers[index], self.workdir, index)

    def start_envoy(self) -> None:
        """Start Envoy again, on the same ports."""
        self.envoy = _spawn_envoy(self.env, self.workdir, self.access_log)


def _dev_token(env: dict[str, str]) -> str | None:
    """A token from `comms dev-token` when this version of the server checks tokens (it then
    trusts the development key under COMMS_DATA_DIR); None for a server without auth."""
    made = subprocess.run(
        [COMMS, "dev-token", "--ttl", str(24 * 3600)], env=env, capture_output=True, text=True
    )
    if made.returncode == 0:
        return made.stdout.strip().splitlines()[-1]
    if "invalid choice" in made.stderr:
        return None
    raise RuntimeError(f"comms dev-token failed: {made.stderr.strip()}")


def _log_tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-20:])


def _wait_serving(process: subprocess.Popen[bytes], target: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    # Retry the connection every 0.1 s, not after grpc's default backoff of 1 s and more.
    with grpc.insecure_channel(target, options=RECONNECT_FAST) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"comms serve exited with {process.returncode}:\n" + _log_tail(log)
                )
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise TimeoutError("comms serve did not start serving within 30 s")


def wait_until_ok(
    process: subprocess.Popen[Any],
    url: str,
    name: str,
    seconds: float = 30,
    details: Callable[[], str] = lambda: "",
) -> None:
    """Poll url until it answers 200; fail at once, with details(), if process exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{details()}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:
            if answer.status == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{name} did not answer {url} within {seconds:.0f} s")


def _stop(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _spawn_server(
    env: dict[str, str], address: tuple[str, int], workdir: Path, index: int
) -> subprocess.Popen[bytes]:
    """`comms serve` on address, logging to server-<index>.log."""
    host, port = address
    log = workdir / f"server-{index}.log"
    own = env | {"COMMS_BIND_HOST": host, "COMMS_GRPC_PORT": str(port)}
    with open(log, "ab") as out:
        server = subprocess.Popen([COMMS, "serve"], env=own, stdout=out, stderr=out)
    try:
        _wait_serving(server, f"{host}:{port}", log)
    except BaseException:
        _stop(server)
        raise
    return server


def _spawn_envoy(env: dict[str, str], workdir: Path, access_log: bool) -> subprocess.Popen[bytes]:
    # Envoy's access log (stdout) is part of its work per request, kept only when asked for.
    log, access = workdir / "envoy.log", workdir / "access.log" if access_log else os.devnull
    with open(log, "ab") as out, open(access, "ab") as requests:
        envoy = subprocess.Popen([COMMS, "gateway"], env=env, stdout=requests, stderr=out)
    try:
        ready = f"http://127.0.0.1:{env['COMMS_ADMIN_PORT']}/ready"
        wait_until_ok(envoy, ready, "Envoy", details=lambda: _log_tail(log))
    except BaseException:
        _stop(envoy)
        raise
    return envoy


@contextlib.contextmanager
def running_gateway(
    env: Mapping[str, str], workdir: Path, upstreams: Sequence[str]
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Another `comms gateway` of env's settings, on ports of its own, in front of upstreams;
    it and its /v1/sequences URL."""
    http_port, admin_port = free_port(), free_port()
    own = dict(env) | {
        "COMMS_HTTP_PORT": str(http_port),
        "COMMS_ADMIN_PORT": str(admin_port),
        "COMMS_UPSTREAMS": ",".join(upstreams),
        "COMMS_DATA_DIR": str(workdir),
    }
    envoy = _spawn_envoy(own, workdir, access_log=False)
    try:
        yield envoy, f"http://127.0.0.1:{http_port}/v1/sequences"
    finally:
        _stop(envoy)


@contextlib.contextmanager
def running_stack(
    store: Store,
    workdir: Path,
    settings: Mapping[str, str] | None = None,
    access_log: bool = False,
    hosts: Sequence[str] = ("127.0.0.1",),
    instances: int = 1,
) -> Iterator[Stack]:
    """`comms serve` instances and `comms gateway` (which becomes Envoy: same pid) as child
    processes. Instance i listens on hosts[i % len(hosts)], on a port of its own, and Envoy
    (on 127.0.0.1) balances over them all. COMMS_* settings in the environment
    (COMMS_GRPC_WORKERS, ...) reach them, then those in settings, except the addresses, the
    data directory and the database, which are the stack's own. Whatever processes the
    stack has at the end are stopped."""
    servers = [(host, server_port(host)) for host in islice(cycle(hosts), instances)]
    http_port, admin_port = free_port(), free_port()
    # The operator ports free too, unless settings name them (for a scraper to find).
    env = (
        os.environ
        | {"COMMS_METRICS_PORT": "0", "COMMS_GATEWAY_METRICS_PORT": "0"}
        | dict(settings or {})
        | {
            "COMMS_HTTP_PORT": str(http_port),
            "COMMS_ADMIN_PORT": str(admin_port),
            "COMMS_BIND_HOST": "127.0.0.1",
            "COMMS_UPSTREAMS": ",".join(f"{host}:{port}" for host, port in servers),
            "COMMS_DATA_DIR": str(workdir),
            "COMMS_DATABASE_URL": store.url,
        }
    )
    if "COMMS_AUTH_JWKS_PATH" not in env:
        env["COMMS_ENV"] = "development"
    token = _dev_token(env)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for index, address in enumerate(servers):
            processes.append(_spawn_server(env, address, workdir, index))
        envoy = _spawn_envoy(env, workdir, access_log)
    except BaseException:
        for process in processes:
            _stop(process)
        raise
    stack = Stack(
        store, servers, http_port, admin_port, processes, envoy, token, env, workdir, access_log
    )
    try:
        yield stack
    finally:
        _stop(stack.envoy)
        for process in stack.processes:
            _stop(process)
