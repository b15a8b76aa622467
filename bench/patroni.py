"""A PostgreSQL that fails over, on this machine: one etcd and two Patroni nodes on loopback
ports, one primary and one synchronous standby (`synchronous_mode: true`), so that a commit
the service acknowledged is on both. Used by `make ha` (bench/ha.py) and its short form in
tests/integration/test_ha.py. Nothing is downloaded but the Debian packages `patroni` and
`etcd-server`, installed with apt-get when missing (as root)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from bench.stack import process_tree, server_port

PACKAGES = {"patroni": "patroni", "etcd": "etcd-server"}  # command -> Debian package
DATABASE = "comms"
# Leader key TTL, Patroni's loop and its DCS retries, in seconds (Patroni needs loop_wait +
# 2 x retry_timeout <= ttl). A dead primary's key expires after ttl: that is most of the
# failover time. Patroni's defaults (30, 10, 10) would make it about 30 s.
TTL, LOOP_WAIT, RETRY_TIMEOUT = 10, 1, 3


def missing() -> str:
    """Why the cluster cannot run here, after installing what is missing if we can; "" if
    it can."""
    absent = [package for command, package in PACKAGES.items() if not shutil.which(command)]
    if absent and os.geteuid() == 0 and shutil.which("apt-get"):
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        installed = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *absent],
            env=env,
            capture_output=True,
            text=True,
        )
        if installed.returncode != 0:
            return f"apt-get install {' '.join(absent)} failed: {installed.stderr.strip()}"
        absent = [p for c, p in PACKAGES.items() if not shutil.which(c)]
    if absent:
        return f"needs the Debian packages {' '.join(absent)} (apt-get install, as root)"
    if not _postgres_bin():
        return "needs PostgreSQL's server binaries (/usr/lib/postgresql/<version>/bin)"
    return ""


def _postgres_bin() -> str:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: p.parts)
    return str(found[-1].parent) if found else ""


def _user() -> str | None:
    """PostgreSQL refuses to run as root: as root, the nodes run as the postgres user."""
    return "postgres" if os.geteuid() == 0 else None


def _own(path: Path) -> Path:
    """path, made the nodes' user's (a directory is created first)."""
    if not path.exists():
        path.mkdir(mode=0o700)
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(path, account.pw_uid, account.pw_gid)
    return path


def _get(url: str) -> tuple[int, dict[str, object]]:
    """(status, JSON body) of a Patroni REST call; (0, {}) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:  # 503: "not the primary", and the like
        with contextlib.suppress(ValueError):
            return error.code, json.load(error)
        return error.code, {}
    except (OSError, ValueError):
        return 0, {}


@dataclass
class Node:
    """One Patroni node: its ports, its config file and its process (None while down)."""

    name: str
    pg_port: int
    rest_port: int
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                ["patroni", str(self.config)],
                stdout=out,
                stderr=out,
                start_new_session=True,  # a Ctrl-C of the drill stops it in order, not twice
                user=_user(),
            )

    def crash(self) -> None:
        """kill -9 of the node: Patroni and its PostgreSQL (which Patroni starts detached,
        so it is not in Patroni's process tree), the postmaster and its backends at once,
        as a machine that dies would leave them."""
        pids = process_tree(self.process.pid) if self.process else []
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids += process_tree(int((self.data / "postmaster.pid").read_text().split()[0]))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process:
            self.process.wait()
        self.process = None

    @property
    def data(self) -> Path:
        return self.config.parent / "data"

    def role(self) -> str:
        """ "primary", "replica", or "" (down, starting, or not answering)."""
        status, body = _get(f"http://127.0.0.1:{self.rest_port}/patroni")
        state, role = body.get("state"), body.get("role")
        if status == 0 or state != "running":
            return ""
        return "primary" if role in ("master", "primary") else str(role)

    def is_sync_standby(self) -> bool:
        status, _ = _get(f"http://127.0.0.1:{self.rest_port}/sync")
        return status == 200


@dataclass
class Cluster:
    nodes: list[Node]
    etcd: subprocess.Popen[bytes]
    workdir: Path
    superuser: str = "postgres"
    stopped: list[Node] = field(default_factory=list)

    def url(self, database: str = DATABASE) -> str:
        """libpq's multi-host URL: whichever node takes writes now."""
        hosts = ",".join(f"127.0.0.1:{node.pg_port}" for node in self.nodes)
        return (
            f"postgresql://{self.superuser}@{hosts}/{database}"
            "?target_session_attrs=read-write&connect_timeout=2"
        )

    def primary(self) -> Node | None:
        found = [node for node in self.nodes if node.role() == "primary"]
        return found[0] if len(found) == 1 else None

    def wait_healthy(self, timeout: float = 90) -> Node:
        """Until one node is the primary and the other its synchronous standby: the
        primary."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(f"patroni {node.name} exited:\n{_tail(node.log)}")
            primary = self.primary()
            others = [node for node in self.nodes if node is not primary]
            if primary and all(node.is_sync_standby() for node in others):
                return primary
            time.sleep(0.2)
        logs = "\n".join(f"--- {node.name}\n{_tail(node.log)}" for node in self.nodes)
        raise TimeoutError(f"no primary with a synchronous standby within {timeout:g} s\n{logs}")


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _node_config(
    name: str, pg_port: int, rest_port: int, etcd_port: int, home: Path
) -> dict[str, Any]:
    return {
        "scope": "comms",
        "name": name,
        "restapi": {
            "listen": f"127.0.0.1:{rest_port}",
            "connect_address": f"127.0.0.1:{rest_port}",
        },
        "etcd3": {"hosts": f"127.0.0.1:{etcd_port}"},
        "bootstrap": {
            "dcs": {
                "ttl": TTL,
                "loop_wait": LOOP_WAIT,
                "retry_timeout": RETRY_TIMEOUT,
                # A standby may take over only if it has every acknowledged commit.
                "synchronous_mode": True,
                "maximum_lag_on_failover": 0,
                "postgresql": {
                    # The old primary may hold WAL the new one never saw (commits that
                    # were never acknowledged): pg_rewind drops it when it comes back.
                    "use_pg_rewind": True,
                    "parameters": {"synchronous_commit": "on", "max_connections": 200},
                },
            },
            "initdb": [{"encoding": "UTF8"}, "data-checksums"],
        },
        "postgresql": {
            "listen": f"127.0.0.1:{pg_port}",
            "connect_address": f"127.0.0.1:{pg_port}",
            "data_dir": str(home / "data"),
            "bin_dir": _postgres_bin(),
            "pgpass": str(home / "pgpass"),
            "authentication": {
                "superuser": {"username": "postgres", "password": "postgres"},
                "replication": {"username": "replicator", "password": "replicator"},
            },
            "parameters": {"unix_socket_directories": str(home)},
            "pg_hba": [
                "local all all trust",
                "host all all 127.0.0.1/32 trust",
                "host replication replicator 127.0.0.1/32 trust",
            ],
        },
    }


def _start_etcd(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    client, peer = server_port(), server_port()
    data = workdir / "etcd"
    with open(workdir / "etcd.log", "ab") as out:
        etcd = subprocess.Popen(
            [
                "etcd",
                *("--name", "comms-ha", "--data-dir", str(data)),
                *("--listen-client-urls", f"http://127.0.0.1:{client}"),
                *("--advertise-client-urls", f"http://127.0.0.1:{client}"),
                *("--listen-peer-urls", f"http://127.0.0.1:{peer}"),
                *("--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}"),
                *("--initial-cluster", f"comms-ha=http://127.0.0.1:{peer}"),
            ],
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while _get(f"http://127.0.0.1:{client}/health")[1].get("health") != "true":
        if etcd.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"etcd did not start:\n{_tail(workdir / 'etcd.log')}")
        time.sleep(0.1)
    return etcd, client


def _stop(process: subprocess.Popen[bytes] | None, timeout: float = 20) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait()


@contextlib.contextmanager
def running_cluster(nodes: int = 2) -> Iterator[Cluster]:
    """etcd and `nodes` Patroni nodes in a new directory (the nodes' user's own, removed at
    the end), the first bootstrapping the cluster; once one is the primary and the rest are
    synchronous standbys, with DATABASE created."""
    workdir = _own(Path(tempfile.mkdtemp(prefix="comms-ha-pg-")))
    etcd, etcd_port = _start_etcd(workdir)
    members: list[Node] = []
    try:
        for i in range(nodes):
            name, home = f"pg{i}", _own(workdir / f"pg{i}")
            pg_port, rest_port = server_port(), server_port()
            config = home / "patroni.yml"  # JSON, which is YAML
            config.write_text(json.dumps(_node_config(name, pg_port, rest_port, etcd_port, home)))
            members.append(Node(name, pg_port, rest_port, config, workdir / f"{name}.log"))
            _own(config)
        cluster = Cluster(members, etcd, workdir)
        members[0].start()
        while members[0].role() != "primary":
            if members[0].process and members[0].process.poll() is not None:
                raise RuntimeError(f"patroni pg0 exited:\n{_tail(members[0].log)}")
            time.sleep(0.2)
        for member in members[1:]:
            member.start()
        cluster.wait_healthy()
        with contextlib.closing(psycopg2.connect(cluster.url("postgres"))) as admin:
            admin.autocommit = True
            with admin.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {DATABASE}")
        yield cluster
    finally:
        for member in members:
            _stop(member.process)
        _stop(etcd)
        shutil.rmtree(workdir, ignore_errors=True)
