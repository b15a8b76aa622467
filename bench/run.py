"""`make bench`: creates, then gets by id, over HTTP (Envoy) and gRPC, per connection count.

Valid creates (3 steps each), then gets by id, each for a fixed time, over HTTP through Envoy
and over native gRPC straight to the server, at several connection counts: one table of the
cells, and each operation and path's goodput under the SLO (the best rate with p99 <= 50 ms
and no errors). Optionally the FastAPI peer of issue 14 beside it, and profiles of the server
and Envoy.

    python -m bench.run [--db sqlite|postgres] [--duration S] [--warmup S]
                        [--connections 1,4,16,64] [--operations create,get] [--paths http,grpc]
                        [--peer PATH] [--profile] [--soak] [--no-save]

The server (`comms serve`) and Envoy (`comms gateway`) run as separate processes on free ports
with a fresh database, so the CPU (utime + stime from /proc/<pid>/stat) and the peak RSS
(VmHWM) in the table are theirs, not the harness's. Each cell: a warm-up, then the measured
phase; in both, every connection finishes its last request before the cell ends, so the rows
stored during a create cell must equal the 2xx (gRPC: OK) answers counted, and a get cell
must store none. The exit status is 1 when they differ (a create stored but not answered as
one, or the reverse); failed answers (the service shedding load, say) are results, shown in
the table with their statuses, and the speed targets are only reported."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench.faults import HttpCaller
from bench.load import OPERATIONS, STEPS_PER_CREATE, GrpcLoad, Phase, WrkLoad
from bench.peer import running_peer
from bench.sampling import TOP, Sampler
from bench.stack import (
    DEFAULT_POSTGRES_URL,
    Stack,
    Store,
    Usage,
    free_port,
    fresh_store,
    machine_busy_seconds,
    running_gateway,
    running_stack,
    usage,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PATH_NAMES = {
    "http": "HTTP → Envoy",
    "grpc": "gRPC → server",
    # bench/floor.py: grpcio answering at once, with nothing of comms; straight and by Envoy
    "floor": "gRPC → floor",
    "floor_http": "HTTP → Envoy → floor",
    "peer": "HTTP → peer",
}
# Issue 14: goodput is the best rate of the cells whose p99 is within the SLO (and that had
# no errors); its targets, reported only, are set for SQLite.
SLO_P99_MS = 50.0
TARGET_RATIO = 2.5  # comms through Envoy over the peer, per operation
TARGET_SERVER_CPU_MS = {"create": 0.45, "get": 0.25}
TARGET_ENVOY_CPU_MS = 0.2
TARGET_GET_P50_MS = 0.8  # through Envoy at one connection
TARGET_GRPC_GETS = 3000.0
BY_ENVOY = ("http", "floor_http")
SEEDED = 200  # sequences created before the get cells; each get reads one of them in turn
PROFILE_CONNECTIONS = 16


@dataclass(frozen=True)
class Target:
    """What a cell loads: comms (its server, Envoy and store) or the peer (one process, whose
    store the benchmark does not count)."""

    http_url: str  # .../v1/sequences
    server_pids: tuple[int, ...]  # every instance: CPU and RSS are their sums
    envoy_pid: int | None = None
    store: Store | None = None
    grpc_target: str | None = None
    token: str | None = None

    @classmethod
    def of(cls, stack: Stack) -> Target:
        return cls(
            stack.http_url,
            tuple(stack.server_pids()),
            stack.envoy.pid,
            stack.store,
            stack.grpc_target,
            stack.token,
        )


@dataclass(frozen=True)
class Measured:
    """A phase, and what the processes under load used while it ran."""

    phase: Phase
    server_cpu: float  # seconds
    envoy_cpu: float
    db_cpu: float  # PostgreSQL backends serving the benchmark's database (0 for SQLite)
    machine_busy: float  # share of all cores busy, everything on the machine included
    others_busy: float  # the share of it not used by the stack, the database or the load
    server: Usage  # at the end of the phase
    envoy: Usage  # all zero without an Envoy

    def per_request_ms(self, seconds: float) -> float:
        return seconds * 1000 / self.phase.ok if self.phase.ok else float("nan")


def measure(target: Target, run: Callable[[float], Phase], seconds: float) -> Measured:
    def envoy() -> Usage:
        return usage(target.envoy_pid) if target.envoy_pid is not None else Usage(0.0, 0, 0, 0)

    def db() -> dict[int, float]:
        return target.store.backend_cpu() if target.store else {}

    server0, envoy0, db0 = usage(*target.server_pids), envoy(), db()
    busy0, total0 = machine_busy_seconds()
    phase = run(seconds)
    busy1, total1 = machine_busy_seconds()
    server1, envoy1, db1 = usage(*target.server_pids), envoy(), db()
    server_cpu = server1.cpu_seconds - server0.cpu_seconds
    envoy_cpu = envoy1.cpu_seconds - envoy0.cpu_seconds
    db_cpu = sum(cpu - db0.get(pid, 0.0) for pid, cpu in db1.items())
    ours = server_cpu + envoy_cpu + db_cpu + phase.generator_cpu_seconds
    total = max(total1 - total0, 1e-9)
    return Measured(
        phase=phase,
        server_cpu=server_cpu,
        envoy_cpu=envoy_cpu,
        db_cpu=db_cpu,
        machine_busy=(busy1 - busy0) / total,
        others_busy=max(0.0, busy1 - busy0 - ours) / total,
        server=server1,
        envoy=envoy1,
    )


@dataclass(frozen=True)
class Cell:
    operation: str  # "create" or "get"
    path: str  # "http", "grpc" or "peer"
    connections: int
    warmup: Phase | None
    measured: Measured
    rows: int | None  # sequences stored during the cell, warm-up included (None: not counted)
    steps: int | None

    @property
    def answered_ok(self) -> int:
        return (self.warmup.ok if self.warmup else 0) + self.measured.phase.ok

    @property
    def errors(self) -> int:
        return (self.warmup.errors if self.warmup else 0) + self.measured.phase.errors

    @property
    def stored_expected(self) -> int:
        return self.answered_ok if self.operation == "create" else 0

    @property
    def rows_match(self) -> bool:
        if self.rows is None:
            return True
        return self.rows == self.stored_expected and self.steps == STEPS_PER_CREATE * self.rows

    @property
    def within_slo(self) -> bool:
        return self.errors == 0 and self.measured.phase.p99_ms <= SLO_P99_MS

    def error_kinds(self) -> dict[str, int]:
        """Failed answers by status, and requests that got none ("no answer")."""
        kinds: dict[str, int] = {}
        for phase in filter(None, (self.warmup, self.measured.phase)):
            for status, n in phase.statuses.items():
                if not (status == "OK" or status.startswith("2")):
                    kinds[status] = kinds.get(status, 0) + n
            if phase.socket_errors:
                kinds["no answer"] = kinds.get("no answer", 0) + phase.socket_errors
        return kinds


@contextlib.contextmanager
def _load(
    target: Target, operation: str, path: str, connections: int, workdir: Path, ids: Path | None
) -> Iterator[Callable[[float], Phase]]:
    """The run(seconds) of one cell's load generator, kept open for the cell."""
    if path in ("grpc", "floor"):
        assert target.grpc_target is not None
        with GrpcLoad.start(target.grpc_target, connections, target.token, operation, ids) as g:
            yield g.run
    else:
        yield WrkLoad(target.http_url, connections, workdir, target.token, operation, ids).run


def run_cell(
    target: Target,
    operation: str,
    path: str,
    connections: int,
    seconds: float,
    warmup: float,
    workdir: Path,
    ids: Path | None = None,
    sampler: Callable[[], Sampler] | None = None,
) -> tuple[Cell, Sampler | None]:
    """One cell; with sampler, the profile it starts at the measured phase is returned too."""
    before = target.store.rows() if target.store else None
    with _load(target, operation, path, connections, workdir, ids) as run:
        warm = run(warmup) if warmup > 0 else None
        started = sampler() if sampler else None
        measured = measure(target, run, seconds)
    rows, steps = (None, None)
    if target.store and before is not None:
        after = target.store.rows()
        rows, steps = after[0] - before[0], after[1] - before[1]
    return Cell(operation, path, connections, warm, measured, rows, steps), started


def seed(target: Target, workdir: Path, count: int = SEEDED) -> Path:
    """Create count sequences over HTTP; the file of their ids, one a line."""
    ids = []
    with HttpCaller(target.http_url, target.token) as caller:
        for i in range(count):
            answer = caller.create(f"Seeded {i}")
            if not answer.acknowledged:
                raise RuntimeError(f"seeding a sequence failed: {answer.status} {answer.body}")
            ids.append(answer.sequence_id)
    path = workdir / "ids.txt"
    path.write_text("\n".join(ids) + "\n")
    return path


# --- reporting -----------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [header, ["-" * w for w in widths], *rows]

    def line(cells: list[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    return "\n".join(line(r) for r in lines)


def _cpu(m: Measured, seconds: float, shown: bool = True) -> str:
    return f"{m.per_request_ms(seconds):.2f}" if shown else "-"


def cells_table(cells: list[Cell]) -> str:
    header = [
        "operation", "path", "conns", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors",
        "server CPU ms/req", "Envoy CPU ms/req", "DB CPU ms/req", "load gen CPU ms/req",
        "machine busy", "others busy", "server peak RSS MiB", "Envoy peak RSS MiB", "rows",
        "2xx", "rows as expected",
    ]  # fmt: skip
    rows = []
    for cell in cells:
        m, phase = cell.measured, cell.measured.phase
        rows.append(
            [
                cell.operation,
                PATH_NAMES[cell.path],
                str(cell.connections),
                f"{phase.rate:.0f}",
                _ms(phase.p50_ms),
                _ms(phase.p90_ms),
                _ms(phase.p99_ms),
                str(cell.errors),
                _cpu(m, m.server_cpu),
                _cpu(m, m.envoy_cpu, cell.path in BY_ENVOY),
                _cpu(m, m.db_cpu, bool(m.db_cpu)),
                _cpu(m, phase.generator_cpu_seconds),
                f"{m.machine_busy:.0%}",
                f"{m.others_busy:.0%}",
                _mib(m.server.peak_rss_kib),
                _mib(m.envoy.peak_rss_kib) if cell.path in BY_ENVOY else "-",
                "-" if cell.rows is None else str(cell.rows),
                str(cell.answered_ok),
                "-" if cell.rows is None else "yes" if cell.rows_match else "NO",
            ]
        )
    notes = [
        f"- {c.operation}, {PATH_NAMES[c.path]}, {c.connections} connections: "
        + ", ".join(f"{status}: {n}" for status, n in sorted(c.error_kinds().items()))
        for c in cells
        if c.errors
    ]
    return "\n".join([markdown_table(header, rows), *(["", "Errors:", *notes] if notes else [])])


def best(cells: list[Cell], operation: str, path: str) -> Cell | None:
    """The goodput cell: the highest rate whose p99 is within the SLO, with no errors."""
    fit = [c for c in cells if (c.operation, c.path) == (operation, path) and c.within_slo]
    return max(fit, key=lambda c: c.measured.phase.rate, default=None)


def goodput_table(cells: list[Cell]) -> str:
    header = [
        "operation", "path", f"best req/s, p99 ≤ {SLO_P99_MS:.0f} ms", "at conns", "p99 ms",
        "server CPU ms/req", "Envoy CPU ms/req", "÷ peer",
    ]  # fmt: skip
    rows = []
    for operation in OPERATIONS:
        peer = best(cells, operation, "peer")
        for path in PATH_NAMES:
            if not any((c.operation, c.path) == (operation, path) for c in cells):
                continue
            cell = best(cells, operation, path)
            if cell is None:
                rows.append([operation, PATH_NAMES[path], "none", *["-"] * 5])
                continue
            m = cell.measured
            ratio = m.phase.rate / peer.measured.phase.rate if peer and path != "peer" else None
            rows.append(
                [
                    operation,
                    PATH_NAMES[path],
                    f"{m.phase.rate:.0f}",
                    str(cell.connections),
                    _ms(m.phase.p99_ms),
                    _cpu(m, m.server_cpu),
                    _cpu(m, m.envoy_cpu, path in BY_ENVOY),
                    f"{ratio:.2f}" if ratio is not None else "-",
                ]
            )
    return markdown_table(header, rows)


def _floor(cells: list[Cell], operation: str, path: str, cpu: str) -> str:
    """What the same CPU figure is with the floor behind it, if the run measured it."""
    cell = next((c for c in cells if (c.operation, c.path) == (operation, path)), None)
    if cell is None:
        return ""
    m = cell.measured
    figure = m.per_request_ms(getattr(m, cpu))
    return f" (with bench/floor.py as the server, {PATH_NAMES[path]}: {figure:.2f})"


def target_lines(cells: list[Cell], store: str) -> list[str]:
    """Issue 14's targets that this run measured, each met or MISSED."""
    checks: list[tuple[str, bool, str]] = []

    def rate(cell: Cell | None) -> float:
        return cell.measured.phase.rate if cell else 0.0

    for operation in OPERATIONS:
        ours, peer = best(cells, operation, "http"), best(cells, operation, "peer")
        if any(c.path == "peer" and c.operation == operation for c in cells):
            name = f"{operation}: goodput through Envoy ≥ {TARGET_RATIO}x the peer's"
            if ours and peer:
                ratio = rate(ours) / rate(peer)
                checks.append((name, ratio >= TARGET_RATIO, f"{ratio:.2f}x"))
            else:
                late = "the peer" if ours else "comms through Envoy"
                checks.append((name, ours is not None, f"{late} had no cell within the SLO"))
        if ours:
            m = ours.measured
            server, envoy = m.per_request_ms(m.server_cpu), m.per_request_ms(m.envoy_cpu)
            limit = TARGET_SERVER_CPU_MS[operation]
            where = f" (at the goodput cell, {ours.connections} connections)"
            checks.append(
                (f"{operation}: server CPU ≤ {limit} ms/req{where}", server <= limit,
                 f"{server:.2f}" + _floor(cells, operation, "floor", "server_cpu"))
            )  # fmt: skip
            checks.append(
                (f"{operation}: Envoy CPU ≤ {TARGET_ENVOY_CPU_MS} ms/req{where}",
                 envoy <= TARGET_ENVOY_CPU_MS,
                 f"{envoy:.2f}" + _floor(cells, operation, "floor_http", "envoy_cpu"))
            )  # fmt: skip
    one = next(
        (c for c in cells if (c.operation, c.path, c.connections) == ("get", "http", 1)), None
    )
    if one:
        p50 = one.measured.phase.p50_ms
        checks.append((f"get p50 through Envoy at 1 connection ≤ {TARGET_GET_P50_MS} ms",
                       p50 <= TARGET_GET_P50_MS, _ms(p50)))  # fmt: skip
    if any((c.operation, c.path) == ("get", "grpc") for c in cells):
        grpc_gets = rate(best(cells, "get", "grpc"))
        checks.append((f"gets straight to gRPC ≥ {TARGET_GRPC_GETS:.0f}/s within the SLO",
                       grpc_gets >= TARGET_GRPC_GETS, f"{grpc_gets:.0f}"))  # fmt: skip
    if not checks:
        return []
    scope = "" if store == "sqlite" else " (the targets are set for SQLite; shown for reference)"
    lines = [f"Targets of issue 14 on {store}{scope}:"]
    lines += [f"- {name}: {got} — {'met' if ok else 'MISSED'}" for name, ok, got in checks]
    return lines


def _command_output(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr


def machine_description(stack: Stack) -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem_kib = int(re.findall(r"^MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text(), re.M)[0])
    envoy = re.search(r"/(\d+\.\d+\.\d+)/", _command_output([_envoy_binary(), "--version"]))
    wrk = re.search(r"wrk (\S+)", _command_output(["wrk", "--version"]))
    commit = _command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).strip()
    dirty = _command_output(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "server", "gateway", "proto"]
    )
    settings = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("COMMS_")]
    if len(stack.servers) > 1:
        instances = len(stack.servers)
        settings.append(f"the server is {instances} instances (CPU and peak RSS are their sums)")
    if stack.token:
        settings.append("a bearer token checked on every call")
    return [
        f"- CPU: {model.group(1) if model else platform.processor()}, {os.cpu_count()} cores",
        f"- memory: {mem_kib / 1024**2:.1f} GiB",
        f"- kernel: {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, Envoy {envoy.group(1) if envoy else '?'}, "
        f"wrk {wrk.group(1) if wrk else '?'}, {stack.store.version()}",
        f"- code: {commit}"
        + (" + uncommitted changes in server/, gateway/, proto/" if dirty else ""),
        f"- load average at start: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}",
        f"- settings: {', '.join(settings) or 'defaults'}",
    ]


def _envoy_binary() -> str:
    beside = Path(sys.executable).parent / "envoy"
    return str(beside) if beside.exists() else (shutil.which("envoy") or "envoy")


def save(text: str, store: str, soak: bool) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d-%H%M")
    path = RESULTS_DIR / f"{stamp}-{store}{'-soak' if soak else ''}.md"
    path.write_text(text)
    return path


# --- the two modes -------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Sweep:
    """The cells run on one target, and what its store must hold after them."""

    cells: list[Cell]
    profiles: list[str]  # --profile: the tables of the profiled cells
    expected_rows: int  # creates answered OK (profiled cells too) + sequences seeded


def sweep(target: Target, paths: list[str], args: argparse.Namespace, workdir: Path) -> Sweep:
    """For each operation (creates first, then the seeding, then gets), each path and each
    connection count, a cell; with --profile, one more cell per operation, sampled, at 16
    connections over the first path, which is not in the table (sampling slows it)."""
    done = Sweep([], [], 0)
    ids: Path | None = None
    for operation in args.operations:
        if operation == "get":
            log(f"seeding {SEEDED} sequences for the gets")
            ids = seed(target, workdir)
            done.expected_rows += SEEDED
        plan = [(path, connections, False) for path in paths for connections in args.connections]
        if args.profile:
            plan.append((paths[0], PROFILE_CONNECTIONS, True))
        for path, connections, profiled in plan:
            what = f"{operation}, {PATH_NAMES[path]}, {connections} connections"
            log(f"{what}{', profiled' if profiled else ''}: "
                f"{args.warmup:g} s warm-up + {args.duration:g} s")  # fmt: skip
            sampler = None
            if profiled:
                out = workdir / f"profile-{operation}-{path}"
                envoy = target.envoy_pid if path == "http" else None
                first = target.server_pids[0]  # py-spy follows one process tree
                sampler = partial(Sampler, first, envoy, args.duration, out)
            cell, started = run_cell(
                target, operation, path, connections, args.duration, args.warmup, workdir, ids,
                sampler,
            )  # fmt: skip
            log(f"  {cell.measured.phase.rate:.0f} {operation}s/s, {cell.errors} errors")
            done.expected_rows += cell.answered_ok if operation == "create" else 0
            if started:
                some = len(target.server_pids) > 1
                one = [f"py-spy samples the first of {len(target.server_pids)} instances.", ""]
                done.profiles += [f"### {what}", "", *(one if some else []), *started.report(), ""]
            else:
                done.cells.append(cell)
    return done


@contextlib.contextmanager
def running_floor(stack: Stack, workdir: Path) -> Iterator[Target]:
    """bench/floor.py on a free port, with the server's settings, and a `comms gateway` of the
    stack's settings in front of it."""
    port = free_port()
    command = [sys.executable, "-m", "bench.floor", str(port)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO) as process:
        try:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("bench/floor.py did not start")
            floor_dir = workdir / "floor"
            floor_dir.mkdir()
            with running_gateway(stack.env, floor_dir, [f"127.0.0.1:{port}"]) as (envoy, url):
                yield Target(
                    url, (process.pid,), envoy.pid, grpc_target=f"127.0.0.1:{port}",
                    token=stack.token,
                )  # fmt: skip
        finally:
            process.terminate()
            process.wait(30)


def floor_cells(stack: Stack, args: argparse.Namespace, workdir: Path) -> list[Cell]:
    """A cell per operation at 16 connections against bench/floor.py: over gRPC, and with the
    HTTP path through a gateway too."""
    any_id = workdir / "floor-ids.txt"  # the floor answers every id alike
    any_id.write_text(str(uuid.uuid4()) + "\n")
    paths = ["floor"] + (["floor_http"] if "http" in args.paths else [])
    cells = []
    with running_floor(stack, workdir) as target:
        for operation, path in itertools.product(args.operations, paths):
            log(f"{operation}, {PATH_NAMES[path]}, {PROFILE_CONNECTIONS} connections: "
                f"{args.warmup:g} s warm-up + {args.duration:g} s")  # fmt: skip
            cell, _ = run_cell(
                target, operation, path, PROFILE_CONNECTIONS, args.duration, args.warmup,
                workdir, any_id,
            )  # fmt: skip
            cells.append(cell)
    return cells


def benchmark(stack: Stack, args: argparse.Namespace, workdir: Path) -> tuple[str, bool]:
    ours = sweep(Target.of(stack), args.paths, args, workdir)
    total_rows, _ = stack.store.rows()
    intact = all(c.rows_match for c in ours.cells) and total_rows == ours.expected_rows
    cells, profiles = ours.cells, ours.profiles
    if "grpc" in args.paths:
        cells = cells + floor_cells(stack, args, workdir)
    if args.peer:
        peer_dir = workdir / "peer"
        peer_dir.mkdir()
        with running_peer(args.peer, peer_dir) as peer:
            theirs = sweep(Target(peer.http_url, (peer.process.pid,)), ["peer"], args, peer_dir)
        cells, profiles = cells + theirs.cells, profiles + theirs.profiles
    lines = [
        cells_table(cells),
        "",
        f"Rows in comms' database after the run: {total_rows}; expected (creates answered"
        f" 2xx/OK, profiled cells too, + {SEEDED if 'get' in args.operations else 0} seeded):"
        f" {ours.expected_rows} ({'equal' if total_rows == ours.expected_rows else 'NOT EQUAL'}).",
        "",
        f"Goodput under the SLO: each operation and path's best rate over the connection counts"
        f" among the cells with p99 ≤ {SLO_P99_MS:.0f} ms and no errors; ÷ peer: that rate over"
        " the peer's best for the same operation.",
        "",
        goodput_table(cells),
        "",
        *target_lines(cells, stack.store.kind),
        *(
            ["", "## Profiles (sampled cells, not in the tables above)", "", *profiles]
            if profiles
            else []
        ),
    ]
    return "\n".join(lines), intact


def soak(stack: Stack, args: argparse.Namespace, workdir: Path) -> tuple[str, bool]:
    connections = args.connections[0]
    window = args.duration / args.windows
    wrk = WrkLoad(stack.http_url, connections, workdir, stack.token)
    rows0, _ = stack.store.rows()
    before = usage(*stack.server_pids()), usage(stack.envoy.pid)
    answered = 0
    if args.warmup > 0:
        log(f"soak: {args.warmup:g} s warm-up")
        answered += wrk.run(args.warmup).ok
    windows: list[Measured] = []
    header = [
        "t s", "creates/s", "p50 ms", "p90 ms", "p99 ms", "errors", "server CPU ms/create",
        "Envoy CPU ms/create", "server RSS MiB", "Envoy RSS MiB", "machine busy", "others busy",
    ]  # fmt: skip
    rows: list[list[str]] = []
    log(f"soak: HTTP → Envoy, {connections} connections, {args.windows} windows of {window:g} s")
    for i in range(args.windows):
        m = measure(Target.of(stack), wrk.run, window)
        windows.append(m)
        answered += m.phase.ok
        p = m.phase
        rows.append(
            [
                f"{(i + 1) * window:.0f}", f"{p.rate:.0f}", _ms(p.p50_ms), _ms(p.p90_ms),
                _ms(p.p99_ms), str(p.errors), f"{m.per_request_ms(m.server_cpu):.2f}",
                f"{m.per_request_ms(m.envoy_cpu):.2f}", _mib(m.server.rss_kib),
                _mib(m.envoy.rss_kib), f"{m.machine_busy:.0%}", f"{m.others_busy:.0%}",
            ]
        )  # fmt: skip
        log("  " + " | ".join(rows[-1]))
    first, last = windows[0], windows[-1]
    stored = stack.store.rows()[0] - rows0
    errors = sum(m.phase.errors for m in windows)

    def change(name: str, start: float, end: float, unit: str = "") -> str:
        return f"- {name}: {start:.1f} → {end:.1f}{unit} ({end - start:+.1f})"

    lines = [
        markdown_table(header, rows),
        "",
        f"First window → last window ({args.duration:g} s at {connections} connections):",
        f"- RSS before the load: server {_mib(before[0].rss_kib)} MiB, "
        f"Envoy {_mib(before[1].rss_kib)} MiB",
        change("server RSS", first.server.rss_kib / 1024, last.server.rss_kib / 1024, " MiB"),
        change("Envoy RSS", first.envoy.rss_kib / 1024, last.envoy.rss_kib / 1024, " MiB"),
        change("p50 latency", first.phase.p50_ms, last.phase.p50_ms, " ms"),
        change("p99 latency", first.phase.p99_ms, last.phase.p99_ms, " ms"),
        change("creates/s", first.phase.rate, last.phase.rate),
        f"- peak RSS: server {_mib(last.server.peak_rss_kib)} MiB, "
        f"Envoy {_mib(last.envoy.peak_rss_kib)} MiB",
        f"- errors {errors}; rows stored {stored}, 2xx counted {answered}"
        f" ({'equal' if stored == answered else 'NOT EQUAL'})",
    ]  # fmt: skip
    return "\n".join(lines), stored == answered


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make bench ARGS=...", description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="a PostgreSQL the benchmark may create (and drop) a database on "
        "(default: $COMMS_TEST_POSTGRES_URL or %(default)s)",
    )
    parser.add_argument(
        "--duration", type=float, help="measured seconds per cell (default 10; soak: 600)"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each cell")
    parser.add_argument(
        "--connections",
        type=lambda s: [int(n) for n in s.split(",")],
        help="comma-separated connection counts (default 1,4,16,64; soak: 16)",
    )
    parser.add_argument(
        "--operations",
        type=lambda s: s.split(","),
        default=list(OPERATIONS),
        help="create and/or get (by id, of sequences seeded first); default both",
    )
    parser.add_argument(
        "--paths",
        type=lambda s: s.split(","),
        default=["http", "grpc"],
        help="http (through Envoy) and/or grpc (straight to the server); default both",
    )
    parser.add_argument(
        "--soak",
        action="store_true",
        help="one long run over HTTP at 16 connections, in windows: RSS and latency over time",
    )
    parser.add_argument("--windows", type=int, default=10, help="soak: windows reported")
    parser.add_argument(
        "--instances",
        type=int,
        help="`comms serve` instances behind Envoy, each on a port of its own (default: one on"
        " SQLite, one per core on PostgreSQL); the grpc path drives the first alone",
    )
    parser.add_argument(
        "--peer",
        type=Path,
        metavar="PATH",
        help="also load the peer of issue 14 (a FastAPI app file, run by uvicorn with a fresh"
        " SQLite database) with the same wrk sweep, and print the ratio per operation",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help=f"one more cell per operation at {PROFILE_CONNECTIONS} connections, sampled: the"
        f" top {TOP} functions of the server (py-spy; its first instance) and of Envoy (perf)",
    )
    parser.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS_DIR}/")
    args = parser.parse_args(argv)
    if unknown := set(args.paths) - {"http", "grpc"}:
        parser.error(f"unknown path(s) {', '.join(sorted(unknown))}: use http and/or grpc")
    if unknown := set(args.operations) - set(OPERATIONS):
        parser.error(f"unknown operation(s) {', '.join(sorted(unknown))}: use create and/or get")
    if args.peer and not args.peer.is_file():
        parser.error(f"--peer {args.peer}: no such file")
    if args.soak and (args.peer or args.profile):
        parser.error("--soak runs alone: no --peer or --profile with it")
    if args.duration is None:
        args.duration = 600.0 if args.soak else 10.0
    if args.connections is None:
        args.connections = [16] if args.soak else [1, 4, 16, 64]
    if args.instances is None:
        # SQLite has one writer: a second process raised throughput by 10% but its lock
        # hand-offs took p99 from 25 to 126 ms. PostgreSQL takes one per core.
        args.instances = 1 if args.db == "sqlite" else os.cpu_count() or 1
    if (args.soak or args.peer or "http" in args.paths) and not shutil.which("wrk"):
        parser.error("wrk is not installed: `make bench` installs it (apt-get install wrk)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="comms-bench-") as tmp,
        fresh_store(args.db, Path(tmp), args.postgres_url) as store,
        running_stack(store, Path(tmp), instances=args.instances) as stack,
    ):
        description = machine_description(stack)
        body, rows_match = (soak if args.soak else benchmark)(stack, args, Path(tmp))
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    kind = "soak" if args.soak else "benchmark"
    text = "\n".join(
        [
            f"# comms {kind}: {args.db}, {when}",
            "",
            *description,
            f"- load: valid creates of {STEPS_PER_CREATE} steps"
            + ("" if args.soak else f", and gets by id of {SEEDED} sequences seeded, in turn")
            + f"; closed loop; {args.warmup:g} s warm-up, then {args.duration:g} s measured"
            + ("" if args.soak else " per cell")
            + "; HTTP by wrk (1 thread), gRPC by bench/grpc_driver.py (grpc.aio, a channel per"
            " connection); CPU per request is the process's CPU time in the measured phase over"
            " the requests answered 2xx/OK in it (DB: the PostgreSQL backends of the benchmark's"
            " database); machine busy: all processes, share of all cores; others busy: the part"
            " of it that is none of these (other work on a shared machine)"
            + (f"; the peer: {args.peer.name}, by uvicorn, one process" if args.peer else ""),
            "",
            body,
            "",
        ]
    )
    print("\n" + text)
    if not args.no_save:
        log(f"written to {save(text, args.db, args.soak).relative_to(REPO)}")
    log(f"took {time.monotonic() - started:.0f} s")
    if not rows_match:
        log("FAILED: the rows stored do not match the successes counted")
    return 0 if rows_match else 1


if __name__ == "__main__":
    sys.exit(main())
