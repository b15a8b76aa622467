"""`make chaos`: the faults of tests/integration/test_faults.py, longer and repeated, under a
steady load of creates; one table of what each did to the creates, and one of overload.

    python -m bench.chaos [--db sqlite,postgres] [--seconds S] [--only FAULT,...]

Each fault gets a fresh store and its own `comms serve` and Envoy (bench/stack.py). Four HTTP
clients through Envoy and two gRPC clients straight to the server create sequences, each with
a name of its own, for S seconds (default 15) while the fault strikes again and again; then
every answer is matched with the rows stored (bench/faults.py). The exit status is 1 if any
create answered 201/OK is missing, any sequence lacks a step or a step its sequence, any
create is stored twice, a caller got an answer the fault does not explain (a 500, say), a
graceful stop left a create in doubt, or SQLite's integrity check failed. Speed is reported,
never judged."""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import resource
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from bench import faults
from bench.faults import Answer, CreateLoad
from bench.run import markdown_table
from bench.stack import DEFAULT_POSTGRES_URL, Stack, Store, fresh_store, running_stack, usage

# The answers each fault may explain; anything else is a failure.
SERVER_DOWN = {"http 201", "http 503", "grpc OK", "grpc UNAVAILABLE"}
GATEWAY_DOWN = {"http 201", f"http {faults.NO_ANSWER}", "grpc OK"}
# grpc drops calls that reach a server just as it stops with CANCELLED, before they run.
GRACEFUL_STOP = SERVER_DOWN | {"grpc CANCELLED"}
# Overload: one server process with 4 workers admitting 16 calls, and 4 x 16 clients.
OVERLOAD_WORKERS, OVERLOAD_CAPACITY, OVERLOAD_CLIENTS = 4, 16, 64


@dataclass
class Outcome:
    fault: str
    store: str
    strikes: int
    report: faults.Report
    problems: list[str]

    @property
    def ok(self) -> bool:
        return self.report.intact and not self.problems


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def stack_on(
    kind: str,
    workdir: Path,
    postgres_url: str,
    access_log: bool = False,
    instances: int = 1,
    **settings: str,
) -> Iterator[Stack]:
    """A fresh store of this kind and a stack on it. On PostgreSQL the server's connections
    carry an application_name of their own: the fault ends theirs and no one else's."""
    workdir.mkdir(parents=True, exist_ok=True)
    with fresh_store(kind, workdir, postgres_url) as store:
        if kind == "postgres":
            name = f"comms-chaos-{uuid.uuid4().hex[:8]}"
            store = Store(kind, faults.with_application_name(store.url, name))
        with running_stack(store, workdir, settings, access_log, instances=instances) as stack:
            yield stack


def steady_load(stack: Stack) -> CreateLoad:
    return CreateLoad(
        token=stack.token,
        http_url=stack.http_url,
        http_clients=4,
        grpc_target=stack.grpc_target,
        grpc_clients=2,
    )


@dataclass(frozen=True)
class Strikes:
    count: int
    recovered: bool  # creates succeeded again, by themselves, after the last strike


def strike_repeatedly(
    load: CreateLoad, seconds: float, every: float, strike: Callable[[], object]
) -> Strikes:
    """Strike every `every` seconds for `seconds`; then wait (10 s at most) until creates
    succeed again over HTTP."""
    count, end = 0, time.monotonic() + seconds
    while time.monotonic() + every < end:
        time.sleep(every)
        strike()
        count += 1
    time.sleep(max(0.0, end - time.monotonic()))
    try:
        load.wait_for_more("201", 10)
    except TimeoutError:
        return Strikes(count, recovered=False)
    return Strikes(count, recovered=True)


def judge(
    fault: str,
    stack: Stack,
    strikes: Strikes,
    answers: list[Answer],
    allowed: set[str],
    problems: list[str] | None = None,
    *,
    doubt_allowed: bool = True,
) -> Outcome:
    """Answers against rows, and the answers against those the fault explains."""
    report = faults.check(stack.store, answers)
    problems = list(problems or [])
    if not strikes.recovered:
        problems.append("creates did not succeed again within 10 s of the last strike")
    if report.in_doubt and not doubt_allowed:
        problems.append(f"{report.in_doubt} creates in doubt")
    if unexplained := sorted(set(report.statuses) - allowed):
        problems.append(f"answers no fault explains: {unexplained}")
    outcome = Outcome(fault, stack.store.kind, strikes.count, report, problems)
    log(f"  {report.summary()}" + "".join(f"; {p}" for p in problems))
    return outcome


# --- the faults ----------------------------------------------------------------------------


def kill_server(kind: str, workdir: Path, args: argparse.Namespace) -> Outcome:
    with stack_on(kind, workdir, args.postgres_url) as stack, steady_load(stack) as load:

        def strike() -> None:
            faults.crash(stack.server)  # the one server instance
            time.sleep(0.5)  # down for a while: callers get 503 / UNAVAILABLE
            stack.start_server()

        strikes = strike_repeatedly(load, args.seconds, 3, strike)
        answers = load.stop()
        retries = faults.envoy_stat(stack.admin_port, "cluster.comms_grpc.upstream_rq_retry")
        problems = [f"Envoy retried {retries} creates"] if retries else []
        return judge("kill -9 server", stack, strikes, answers, SERVER_DOWN, problems)


def kill_process(kind: str, workdir: Path, args: argparse.Namespace) -> Outcome:
    """One of two server instances crashes and is started again half a second later (what
    its process manager would do); the other serves on."""
    with (
        stack_on(kind, workdir, args.postgres_url, instances=2) as stack,
        steady_load(stack) as load,
    ):

        def strike() -> None:
            faults.crash(stack.processes[1])
            time.sleep(0.5)
            stack.start_server(1)

        strikes = strike_repeatedly(load, args.seconds, 2, strike)
        return judge("kill -9 one of 2 server instances", stack, strikes, load.stop(), SERVER_DOWN)


def kill_envoy(kind: str, workdir: Path, args: argparse.Namespace) -> Outcome:
    with stack_on(kind, workdir, args.postgres_url) as stack, steady_load(stack) as load:

        def strike() -> None:
            stack.envoy.kill()
            stack.envoy.wait()
            time.sleep(0.5)
            stack.start_envoy()

        strikes = strike_repeatedly(load, args.seconds, 3, strike)
        return judge("kill -9 Envoy", stack, strikes, load.stop(), GATEWAY_DOWN)


def stop_server(kind: str, workdir: Path, args: argparse.Namespace) -> Outcome:
    with stack_on(kind, workdir, args.postgres_url) as stack, steady_load(stack) as load:
        exits: list[int] = []

        def strike() -> None:
            stack.server.send_signal(signal.SIGTERM)
            exits.append(stack.server.wait(30))
            stack.start_server()

        strikes = strike_repeatedly(load, args.seconds, 3, strike)
        answers = load.stop()
        problems = [f"exit statuses {exits}"] if any(exits) else []
        # A graceful stop answers every create it stores: none may be in doubt.
        return judge(
            "SIGTERM server", stack, strikes, answers, GRACEFUL_STOP, problems, doubt_allowed=False
        )


def end_connections(kind: str, workdir: Path, args: argparse.Namespace) -> Outcome:
    with stack_on(kind, workdir, args.postgres_url) as stack, steady_load(stack) as load:
        ended = 0

        def strike() -> None:
            nonlocal ended
            ended += faults.terminate_backends(stack.store)

        strikes = strike_repeatedly(load, args.seconds, 0.5, strike)
        log(f"  {ended} server connections terminated in {strikes.count} strikes")
        return judge("PostgreSQL connections killed", stack, strikes, load.stop(), SERVER_DOWN)


def lock_sqlite(kind: str, workdir: Path, args: argparse.Namespace) -> Outcome:
    settings = {"COMMS_SQLITE_BUSY_TIMEOUT_MS": "100"}
    with (
        stack_on(kind, workdir, args.postgres_url, **settings) as stack,
        steady_load(stack) as load,
    ):

        def strike() -> None:
            with faults.writes_held(stack.store):
                time.sleep(1)  # ten busy timeouts

        strikes = strike_repeatedly(load, args.seconds, 2, strike)
        return judge("SQLite locked 1 s (busy 0.1 s)", stack, strikes, load.stop(), SERVER_DOWN)


def fill_disk(kind: str, workdir: Path, args: argparse.Namespace) -> Outcome:
    """SQLite on a tmpfs big enough for the run's creates (4 MiB a second); the disk is
    filled, left full for 2 s, freed, and 2 s later filled again."""
    with faults.small_disk(workdir / "disk", f"{max(16, round(4 * args.seconds))}m") as disk:
        store = Store("sqlite", f"sqlite:///{disk / 'comms.db'}")
        with running_stack(store, workdir) as stack, steady_load(stack) as load:

            def strike() -> None:
                filler = faults.fill(disk, leave_bytes=0)
                time.sleep(2)
                filler.unlink()

            strikes = strike_repeatedly(load, args.seconds, 2, strike)
            answers = load.stop()
        integrity = faults.integrity_check(disk / "comms.db")
        log(f"  PRAGMA integrity_check: {integrity}")
        problems = [] if integrity == "ok" else [f"integrity_check: {integrity}"]
        return judge("disk full 2 s (tmpfs)", stack, strikes, answers, SERVER_DOWN, problems)


FAULTS: dict[str, tuple[Callable[[str, Path, argparse.Namespace], Outcome], list[str]]] = {
    "kill-server": (kill_server, ["sqlite", "postgres"]),
    "kill-process": (kill_process, ["sqlite", "postgres"]),
    "kill-envoy": (kill_envoy, ["sqlite", "postgres"]),
    "sigterm": (stop_server, ["sqlite", "postgres"]),
    "pg-connections": (end_connections, ["postgres"]),
    "sqlite-lock": (lock_sqlite, ["sqlite"]),
    "disk-full": (fill_disk, ["sqlite"]),
}


# --- overload ------------------------------------------------------------------------------


@dataclass
class Window:
    label: str
    clients: int
    answers: list[Answer]
    at_envoy: dict[str, list[float]]  # status -> sorted seconds, from Envoy's access log
    server_rss_kib: int  # at the end, and the peak
    server_peak_kib: int
    envoy_rss_kib: int
    cpu_seconds: tuple[float, float, float]  # used by the server, Envoy, the clients

    def at_client(self, status: str) -> list[float]:
        return sorted(a.seconds for a in self.answers if a.status == status)


# Status and %DURATION% (ms) of a create in Envoy's default access log format.
_ACCESS = re.compile(r'"POST /v1/sequences HTTP/1.1" (\d{3}) \S+ \d+ \d+ (\d+) ')


def _access_log(path: Path, offset: int) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    with open(path, "rb") as log:
        log.seek(offset)
        for match in _ACCESS.finditer(log.read().decode(errors="replace")):
            found.setdefault(match.group(1), []).append(int(match.group(2)) / 1000)
    return {status: sorted(seconds) for status, seconds in found.items()}


def percentile(ordered: list[float], p: float) -> float:
    """Nearest rank, in milliseconds; NaN for none."""
    if not ordered:
        return math.nan
    return 1000 * ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def measure_window(stack: Stack, label: str, clients: int, seconds: float) -> Window:
    log(f"  {label}: {clients} HTTP clients for {seconds:g} s")
    load = CreateLoad(token=stack.token, http_url=stack.http_url, http_clients=clients)
    access_log = stack.workdir / "access.log"
    before, logged = _cpu(stack), access_log.stat().st_size
    with load:
        time.sleep(seconds)
    after = _cpu(stack)
    answers = load.stop()
    time.sleep(0.5)  # Envoy writes its access log in the background
    server, envoy = usage(*stack.server_pids()), usage(stack.envoy.pid)
    return Window(
        label,
        clients,
        answers,
        _access_log(access_log, logged),
        server.rss_kib,
        server.peak_rss_kib,
        envoy.rss_kib,
        (after[0] - before[0], after[1] - before[1], after[2] - before[2]),
    )


def overload(kind: str, workdir: Path, args: argparse.Namespace) -> tuple[list[Outcome], str]:
    """The server at its capacity (as many clients as calls it admits), then four times
    past it: the admitted creates should take about as long as at capacity, the rest be shed
    at once, and memory not grow with the excess. For contrast, the same excess with no limit
    on the calls in flight: all of it queues."""
    capacity = OVERLOAD_CAPACITY
    workers = {
        "COMMS_GRPC_WORKERS": str(OVERLOAD_WORKERS),
        "COMMS_MAX_IN_FLIGHT": str(capacity),
    }
    outcomes, windows = [], []
    allowed = {"http 201", "http 503"}
    with stack_on(kind, workdir / "limit", args.postgres_url, access_log=True, **workers) as stack:
        windows.append(measure_window(stack, "at capacity", capacity, args.seconds))
        windows.append(measure_window(stack, "4 x capacity", OVERLOAD_CLIENTS, args.seconds))
        answers = windows[0].answers + windows[1].answers
        outcomes.append(judge("overload, shed", stack, Strikes(0, True), answers, allowed))
    unlimited = workers | {"COMMS_MAX_IN_FLIGHT": "100000"}
    with stack_on(kind, workdir / "nolimit", args.postgres_url, True, **unlimited) as stack:
        windows.append(measure_window(stack, "4 x, no limit", OVERLOAD_CLIENTS, args.seconds))
        outcomes.append(
            judge("overload, no limit", stack, Strikes(0, True), windows[-1].answers, allowed)
        )

    header = [
        "window", "clients", "201/s", "201 p50 / p99 ms", "(at the client)", "503/s",
        "503 p50 / p99 ms", "server RSS / peak MiB", "Envoy RSS MiB",
        "CPU busy: server, Envoy, clients",
    ]  # fmt: skip

    def p50_p99(seconds: list[float]) -> str:
        return f"{percentile(seconds, 50):.1f} / {percentile(seconds, 99):.1f}"

    rows = [
        [
            w.label,
            str(w.clients),
            f"{len(w.at_client('201')) / args.seconds:.0f}",
            p50_p99(w.at_envoy.get("201", [])),
            p50_p99(w.at_client("201")),
            f"{len(w.at_client('503')) / args.seconds:.0f}",
            p50_p99(w.at_envoy.get("503", [])),
            f"{w.server_rss_kib / 1024:.0f} / {w.server_peak_kib / 1024:.0f}",
            f"{w.envoy_rss_kib / 1024:.0f}",
            ", ".join(f"{cpu / args.seconds:.0%}" for cpu in w.cpu_seconds),
        ]
        for w in windows
    ]
    text = "\n".join(
        [
            f"Overload on {kind}: one server process, COMMS_GRPC_WORKERS={OVERLOAD_WORKERS} and"
            f" COMMS_MAX_IN_FLIGHT={capacity}: it admits {capacity} calls at once and refuses the"
            " rest (RESOURCE_EXHAUSTED -> 503);"
            " closed-loop HTTP clients through Envoy (threads of this Python process), a shed"
            " one waiting 20 ms before its next try. Latency as Envoy measured it (its access"
            " log), and for 201s also as the clients did. The clients, Envoy and the server"
            " share this machine's CPU.",
            "",
            markdown_table(header, rows),
        ]
    )
    return outcomes, text


def _cpu(stack: Stack) -> tuple[float, float, float]:
    """CPU seconds so far of the server, of Envoy, and of this process (the clients)."""
    mine = resource.getrusage(resource.RUSAGE_SELF)
    return (
        usage(*stack.server_pids()).cpu_seconds,
        usage(stack.envoy.pid).cpu_seconds,
        mine.ru_utime + mine.ru_stime,
    )


# --- the run -------------------------------------------------------------------------------


def postgres_reachable(url: str) -> str | None:
    try:
        psycopg2.connect(url, connect_timeout=3).close()
    except psycopg2.OperationalError as error:
        return str(error).strip()
    return None


def outcomes_table(outcomes: list[Outcome]) -> str:
    header = [
        "fault", "store", "strikes", "attempted", "acknowledged", "stored", "in doubt", "lost",
        "partial", "duplicated", "answers", "verdict",
    ]  # fmt: skip
    rows = []
    for o in outcomes:
        r = o.report
        answers = ", ".join(f"{status} {n}" for status, n in sorted(r.statuses.items()))
        rows.append(
            [
                o.fault, o.store, str(o.strikes), str(r.attempted), str(r.acknowledged),
                str(r.stored), str(r.in_doubt), str(len(r.lost)),
                str(len(r.partial) + r.orphan_steps), str(len(r.duplicates)), answers,
                "ok" if o.ok else "FAILED: " + "; ".join(o.problems or ["rows"]),
            ]
        )  # fmt: skip
    return markdown_table(header, rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make chaos ARGS=...", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--db", type=lambda s: s.split(","), default=["sqlite", "postgres"], help="stores"
    )
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--seconds", type=float, default=15.0, help="load per fault")
    names = [*FAULTS, "overload"]
    parser.add_argument(
        "--only", type=lambda s: s.split(","), default=names, help=f"of {','.join(names)}"
    )
    args = parser.parse_args(argv)
    if unknown := set(args.only) - set(names):
        parser.error(f"unknown fault(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    stores = list(args.db)
    if "postgres" in stores and (error := postgres_reachable(args.postgres_url)):
        log(f"PostgreSQL at {args.postgres_url} is unreachable, its faults are skipped: {error}")
        stores.remove("postgres")
    outcomes: list[Outcome] = []
    notes: list[str] = []
    for name, (run, kinds) in FAULTS.items():
        for kind in (k for k in kinds if k in stores and name in args.only):
            log(f"{name} on {kind}, {args.seconds:g} s")
            with tempfile.TemporaryDirectory(prefix="comms-chaos-") as tmp:
                try:
                    outcomes.append(run(kind, Path(tmp), args))
                except faults.MountError as error:
                    notes.append(f"{name}: NOT RUN, {error}")
                    log(f"  {notes[-1]}")
                except Exception as error:  # the stack itself failed: say so, go on
                    notes.append(f"{name} on {kind}: FAILED, {type(error).__name__}: {error}")
                    log(f"  {notes[-1]}")
    overload_text = ""
    if "overload" in args.only:
        log(f"overload on sqlite, 3 x {args.seconds:g} s")
        with tempfile.TemporaryDirectory(prefix="comms-chaos-") as tmp:
            shed, overload_text = overload("sqlite", Path(tmp), args)
        outcomes += shed
    print("\n".join(["", outcomes_table(outcomes), "", *notes, "", overload_text]).rstrip())
    log(f"took {time.monotonic() - started:.0f} s")
    failed = [o for o in outcomes if not o.ok]
    if failed:
        log(f"FAILED: {', '.join(f'{o.fault} on {o.store}' for o in failed)}")
    return 1 if failed or notes else 0


if __name__ == "__main__":
    sys.exit(main())
