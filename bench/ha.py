"""`make ha`: the failover drill. etcd and two Patroni PostgreSQL nodes (a primary and its
synchronous standby), `comms serve` instances on 127.0.0.2, .3 and .4 sharing that
PostgreSQL through libpq's multi-host URL, and Envoy on 127.0.0.1 in front of them.

Under a load of creates from good clients (each create has an Idempotency-Key and is retried,
same key and body, on 503 or no answer until it is acknowledged): kill -9 the PostgreSQL
primary; then kill -9 one server instance; then bring both back. It prints, per fault, how
long no create was acknowledged and how many attempts failed; the error rate the clients
saw; and last `ha: acknowledged N, stored N, lost 0, duplicated 0`. Exit status 1 if an
acknowledged create is not stored, a create is stored twice, or a client got an answer a
retry cannot fix (a 4xx)."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import faults, patroni
from bench.faults import NO_ANSWER, Answer, HttpCaller
from bench.stack import Stack, Store, running_stack

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
RETRY_AFTER = 0.05  # seconds a good client waits before it sends a failed create again
GIVE_UP = 60.0  # seconds after which a client stops retrying one create


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Attempt:
    at: float  # time.monotonic() when the answer (or its absence) came
    answer: Answer


class GoodClients:
    """HTTP clients through Envoy, each sending creates one after another; a create that
    fails with 5xx or no answer is sent again with the same Idempotency-Key and body until
    it is acknowledged (or GIVE_UP passes). Stopped, each finishes the create it has."""

    def __init__(self, stack: Stack, clients: int) -> None:
        self._stack = stack
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.attempts: list[Attempt] = []
        self.finals: list[Answer] = []  # each create's last answer
        self.tag = uuid.uuid4().hex[:8]  # every create's name starts with it
        self._threads = [
            threading.Thread(target=self._client, args=(f"{self.tag}-{i}",), daemon=True)
            for i in range(clients)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def acknowledged_since(self, moment: float) -> int:
        with self._lock:
            return sum(a.at > moment and a.answer.acknowledged for a in self.attempts)

    def _client(self, prefix: str) -> None:
        with HttpCaller(self._stack.http_url, self._stack.token) as http:
            n = 0
            while not self._stop.is_set():
                name = f"{prefix}-{n}"
                n += 1
                first = time.monotonic()
                while True:
                    answer = http.create(name, idempotency_key=name)
                    with self._lock:
                        self.attempts.append(Attempt(time.monotonic(), answer))
                    retry = answer.status == NO_ANSWER or answer.status.startswith("5")
                    if not retry or time.monotonic() - first > GIVE_UP:
                        break
                    time.sleep(RETRY_AFTER)
                with self._lock:
                    self.finals.append(answer)


@dataclass(frozen=True)
class Window:
    """What the clients saw from one moment (a fault) to the next."""

    name: str
    start: float
    end: float

    def figures(self, attempts: list[Attempt]) -> tuple[float, int, int, Counter[str]]:
        """(longest time with no create acknowledged, attempts, failed, failures by status)."""
        inside = [a for a in attempts if self.start <= a.at < self.end]
        acknowledged = [a.at for a in inside if a.answer.acknowledged]
        marks = [self.start, *acknowledged, self.end]
        gap = max(later - earlier for earlier, later in itertools.pairwise(marks))
        failed = Counter(_said(a.answer) for a in inside if not a.answer.acknowledged)
        return gap, len(inside), sum(failed.values()), failed


def _said(answer: Answer) -> str:
    """A failed answer in short: its status and message ("503 the store is unavailable...")."""
    body = answer.body
    return f"{answer.status} {body.get('message') if isinstance(body, dict) else body}"


def _wait(condition: Callable[[], bool], what: str, timeout: float = 60) -> float:
    """Seconds until condition holds; TimeoutError naming what if it never does."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not {what} within {timeout:g} s")
        time.sleep(0.05)
    return time.monotonic() - started


def _count(url: str, prefix: str) -> int:
    ((count,),) = Store("postgres", url).query(
        f"SELECT count(*) FROM sequences WHERE name LIKE '{prefix}%'"
    )
    return int(count)


def drill(seconds: float, instances: int, clients: int, workdir: Path) -> tuple[list[str], bool]:
    """The drill; its report lines (the last one the verdict) and whether nothing was lost
    or duplicated."""
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        log(line)

    started = time.monotonic()
    with patroni.running_cluster() as cluster:
        store = Store("postgres", cluster.url())
        old = cluster.primary()
        assert old is not None
        log(f"ha: PostgreSQL up in {time.monotonic() - started:.1f} s, primary {old.name}")
        with running_stack(store, workdir, hosts=HOSTS, instances=instances) as stack:
            servers = ", ".join(f"{h}:{p}" for h, p in stack.servers)
            log(f"ha: {instances} servers ({servers}) behind Envoy on 127.0.0.1:{stack.http_port}")
            load = GoodClients(stack, clients)
            marks = [("steady load", time.monotonic())]
            _wait(lambda: load.acknowledged_since(marks[0][1]) >= 20, "20 creates acknowledged")
            time.sleep(seconds)

            marks.append((f"kill -9 PostgreSQL primary {old.name}", time.monotonic()))
            old.crash()
            new = _wait(lambda: cluster.primary() not in (None, old), "a new primary")
            _wait(lambda: load.acknowledged_since(marks[-1][1]) >= 20, "creates again")
            promoted = cluster.primary()
            log(f"ha: {promoted.name if promoted else '?'} promoted after {new:.1f} s")
            time.sleep(seconds)

            victim = f"{stack.servers[0][0]}:{stack.servers[0][1]}"
            marks.append((f"kill -9 server {victim}", time.monotonic()))
            faults.crash(stack.processes[0])
            time.sleep(seconds)

            marks.append(("both back", time.monotonic()))
            old.start()
            stack.start_server(0)
            back = time.monotonic()
            cluster.wait_healthy(90)
            rejoined = time.monotonic() - back
            log(f"ha: {old.name} back as synchronous standby after {rejoined:.1f} s")
            time.sleep(seconds)
            load.stop()
            ended = time.monotonic()

        windows = [
            Window(name, start, end)
            for (name, start), (_, end) in zip(marks, [*marks[1:], ("", ended)], strict=True)
        ]
        attempts = load.attempts
        for window in windows:
            gap, sent, failed, statuses = window.figures(attempts)
            how = "; ".join(f"{n} x {said}" for said, n in statuses.most_common()) or "none"
            say(
                f"ha: {window.name}: longest with no create acknowledged {gap:.2f} s;"
                f" {failed} of {sent} attempts failed ({how})"
            )
        failed = sum(not a.answer.acknowledged for a in attempts)
        retried = sum(n > 1 for n in Counter(a.answer.name for a in attempts).values())
        replayed = sum(a.answer.replayed for a in attempts)
        say(
            f"ha: client error rate {failed} of {len(attempts)} attempts"
            f" ({100 * failed / max(1, len(attempts)):.1f}%); {retried} of"
            f" {len(load.finals)} creates needed a retry, {replayed} of them answered by"
            " replay (committed before the fault, its answer lost)"
        )
        report = faults.check(store, load.finals)
        refused = [a for a in load.finals if not a.acknowledged]
        if refused:
            say(f"ha: NOT ACKNOWLEDGED in the end: {Counter(a.status for a in refused)}")
        # Replayed on the standby a moment after the commit it confirmed (flushed) to the
        # primary: wait for it to show them all.
        (standby,) = [node for node in cluster.nodes if node is not cluster.primary()]
        with contextlib.suppress(TimeoutError):
            _wait(lambda: _count(_direct_url(standby), load.tag) >= report.stored, "", 10)
        copies = _count(_direct_url(standby), load.tag)
        say(f"ha: the standby {standby.name} holds {copies} of the {report.stored} stored")
        lost, duplicated = len(report.lost), len(report.duplicates)
        say(
            f"ha: acknowledged {report.acknowledged}, stored {report.stored},"
            f" lost {lost}, duplicated {duplicated}"
        )
        return lines, not (lost or duplicated or refused or report.partial)


def _direct_url(node: patroni.Node) -> str:
    return f"postgresql://postgres@127.0.0.1:{node.pg_port}/{patroni.DATABASE}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make ha ARGS=...", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="steady time between faults")
    parser.add_argument("--instances", type=int, default=3, choices=[2, 3], help="servers")
    parser.add_argument("--clients", type=int, default=4, help="HTTP clients creating")
    args = parser.parse_args(argv)
    if reason := patroni.missing():
        log(f"ha: cannot run: the drill {reason}")
        return 2
    with tempfile.TemporaryDirectory(prefix="comms-ha-") as tmp:
        _, intact = drill(args.seconds, args.instances, args.clients, Path(tmp))
    return 0 if intact else 1


if __name__ == "__main__":
    sys.exit(main())
