"""`make bench`: valid creates (3 steps each) for a fixed time, over HTTP through Envoy and over
native gRPC straight to the server, at several connection counts; one table of the results.

    python -m bench.run [--db sqlite|postgres] [--duration S] [--warmup S] [--connections 1,16,64]
                        [--paths http,grpc] [--soak] [--no-save]

The server (`comms serve`) and Envoy (`comms gateway`) run as separate processes on free ports
with a fresh database, so the CPU (utime + stime from /proc/<pid>/stat) and the peak RSS
(VmHWM) in the table are theirs, not the harness's. Each cell: a warm-up, then the measured
phase; in both, every connection finishes its last request before the cell ends, so the rows
stored during a cell must equal the 2xx (gRPC: OK) answers counted. The exit status is 1 when
they differ (a create stored but not answered as one, or the reverse); failed answers (the
service shedding load, say) are results, shown in the table with their statuses, and the speed
targets are only reported."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.load import STEPS_PER_CREATE, GrpcLoad, Phase, WrkLoad
from bench.stack import (
    DEFAULT_POSTGRES_URL,
    Stack,
    Usage,
    fresh_store,
    machine_busy_seconds,
    running_stack,
    usage,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PATH_NAMES = {"http": "HTTP → Envoy", "grpc": "gRPC → server"}
# Issue 5's targets, for HTTP through Envoy at 16 connections on SQLite.
TARGET_CELL = ("http", 16)
TARGET_RATE, TARGET_P99_MS, TARGET_SERVER_CPU_MS = 1000.0, 50.0, 0.8


@dataclass(frozen=True)
class Measured:
    """A phase, and what the stack's processes used while it ran."""

    phase: Phase
    server_cpu: float  # seconds
    envoy_cpu: float
    db_cpu: float  # PostgreSQL backends serving the benchmark's database (0 for SQLite)
    machine_busy: float  # share of all cores busy, everything on the machine included
    others_busy: float  # the share of it not used by the stack, the database or the load
    server: Usage  # at the end of the phase
    envoy: Usage

    def per_create_ms(self, seconds: float) -> float:
        return seconds * 1000 / self.phase.ok if self.phase.ok else float("nan")


def measure(stack: Stack, run: Callable[[float], Phase], seconds: float) -> Measured:
    server0, envoy0 = usage(*stack.server_pids()), usage(stack.envoy.pid)
    db0 = stack.store.backend_cpu()
    busy0, total0 = machine_busy_seconds()
    phase = run(seconds)
    busy1, total1 = machine_busy_seconds()
    server1, envoy1 = usage(*stack.server_pids()), usage(stack.envoy.pid)
    db1 = stack.store.backend_cpu()
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
    path: str  # "http" or "grpc"
    connections: int
    warmup: Phase | None
    measured: Measured
    rows: int  # sequences stored during the cell, warm-up included
    steps: int

    @property
    def answered_ok(self) -> int:
        return (self.warmup.ok if self.warmup else 0) + self.measured.phase.ok

    @property
    def errors(self) -> int:
        return (self.warmup.errors if self.warmup else 0) + self.measured.phase.errors

    @property
    def rows_match(self) -> bool:
        return self.rows == self.answered_ok and self.steps == STEPS_PER_CREATE * self.rows

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


def run_cell(
    stack: Stack, path: str, connections: int, seconds: float, warmup: float, workdir: Path
) -> Cell:
    rows0, steps0 = stack.store.rows()
    if path == "http":
        wrk = WrkLoad(stack.http_url, connections, workdir, stack.token)
        warm = wrk.run(warmup) if warmup > 0 else None
        measured = measure(stack, wrk.run, seconds)
    else:
        with GrpcLoad.start(stack.grpc_target, connections, stack.token) as driver:
            warm = driver.run(warmup) if warmup > 0 else None
            measured = measure(stack, driver.run, seconds)
    rows1, steps1 = stack.store.rows()
    return Cell(path, connections, warm, measured, rows1 - rows0, steps1 - steps0)


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


def cells_table(cells: list[Cell]) -> str:
    header = [
        "path", "conns", "creates/s", "p50 ms", "p90 ms", "p99 ms", "errors",
        "server CPU ms/create", "Envoy CPU ms/create", "DB CPU ms/create",
        "load gen CPU ms/create", "machine busy", "others busy", "server peak RSS MiB",
        "Envoy peak RSS MiB", "rows", "2xx", "rows = 2xx",
    ]  # fmt: skip
    rows = []
    for cell in cells:
        m, phase = cell.measured, cell.measured.phase
        rows.append(
            [
                PATH_NAMES[cell.path],
                str(cell.connections),
                f"{phase.rate:.0f}",
                _ms(phase.p50_ms),
                _ms(phase.p90_ms),
                _ms(phase.p99_ms),
                str(cell.errors),
                f"{m.per_create_ms(m.server_cpu):.2f}",
                f"{m.per_create_ms(m.envoy_cpu):.2f}" if cell.path == "http" else "-",
                f"{m.per_create_ms(m.db_cpu):.2f}" if cell.measured.db_cpu else "-",
                f"{m.per_create_ms(phase.generator_cpu_seconds):.2f}",
                f"{m.machine_busy:.0%}",
                f"{m.others_busy:.0%}",
                _mib(m.server.peak_rss_kib),
                _mib(m.envoy.peak_rss_kib) if cell.path == "http" else "-",
                str(cell.rows),
                str(cell.answered_ok),
                "yes" if cell.rows_match else "NO",
            ]
        )
    notes = [
        f"- {PATH_NAMES[c.path]}, {c.connections} connections: "
        + ", ".join(f"{status}: {n}" for status, n in sorted(c.error_kinds().items()))
        for c in cells
        if c.errors
    ]
    return "\n".join([markdown_table(header, rows), *(["", "Errors:", *notes] if notes else [])])


def target_lines(cells: list[Cell], store: str) -> list[str]:
    cell = next((c for c in cells if (c.path, c.connections) == TARGET_CELL), None)
    if cell is None:
        return []
    m = cell.measured
    server_ms = m.per_create_ms(m.server_cpu)
    checks = [
        (f"≥ {TARGET_RATE:.0f} creates/s", m.phase.rate >= TARGET_RATE, f"{m.phase.rate:.0f}"),
        (f"p99 ≤ {TARGET_P99_MS:.0f} ms", m.phase.p99_ms <= TARGET_P99_MS, _ms(m.phase.p99_ms)),
        ("no errors", cell.errors == 0, str(cell.errors)),
        (
            f"server CPU ≤ {TARGET_SERVER_CPU_MS} ms/create",
            server_ms <= TARGET_SERVER_CPU_MS,
            f"{server_ms:.2f}",
        ),
    ]
    scope = "" if store == "sqlite" else " (the targets are set for SQLite; shown for reference)"
    lines = [f"Targets, HTTP through Envoy at 16 connections on {store}{scope}:"]
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


def benchmark(stack: Stack, args: argparse.Namespace, workdir: Path) -> tuple[str, bool]:
    cells = []
    for path in args.paths:
        for connections in args.connections:
            log(
                f"{PATH_NAMES[path]}, {connections} connections: "
                f"{args.warmup:g} s warm-up + {args.duration:g} s"
            )
            cell = run_cell(stack, path, connections, args.duration, args.warmup, workdir)
            log(f"  {cell.measured.phase.rate:.0f} creates/s, {cell.errors} errors")
            cells.append(cell)
    total_rows, _ = stack.store.rows()
    total_ok = sum(c.answered_ok for c in cells)
    lines = [
        cells_table(cells),
        "",
        f"Rows in the database after the run: {total_rows}; 2xx/OK answers counted: {total_ok}"
        f" ({'equal' if total_rows == total_ok else 'NOT EQUAL'}).",
        "",
        *target_lines(cells, stack.store.kind),
    ]
    return "\n".join(lines), all(c.rows_match for c in cells) and total_rows == total_ok


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
        m = measure(stack, wrk.run, window)
        windows.append(m)
        answered += m.phase.ok
        p = m.phase
        rows.append(
            [
                f"{(i + 1) * window:.0f}", f"{p.rate:.0f}", _ms(p.p50_ms), _ms(p.p90_ms),
                _ms(p.p99_ms), str(p.errors), f"{m.per_create_ms(m.server_cpu):.2f}",
                f"{m.per_create_ms(m.envoy_cpu):.2f}", _mib(m.server.rss_kib),
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
        help="comma-separated connection counts (default 1,16,64; soak: 16)",
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
    parser.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS_DIR}/")
    args = parser.parse_args(argv)
    if unknown := set(args.paths) - set(PATH_NAMES):
        parser.error(f"unknown path(s) {', '.join(sorted(unknown))}: use http and/or grpc")
    if args.duration is None:
        args.duration = 600.0 if args.soak else 10.0
    if args.connections is None:
        args.connections = [16] if args.soak else [1, 16, 64]
    if args.instances is None:
        # SQLite has one writer: a second process raised throughput by 10% but its lock
        # hand-offs took p99 from 25 to 126 ms. PostgreSQL takes one per core.
        args.instances = 1 if args.db == "sqlite" else os.cpu_count() or 1
    if (args.soak or "http" in args.paths) and not shutil.which("wrk"):
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
            f"- load: valid creates of {STEPS_PER_CREATE} steps, closed loop; "
            f"{args.warmup:g} s warm-up, then {args.duration:g} s measured"
            + ("" if args.soak else " per cell")
            + "; HTTP by wrk (1 thread), gRPC by bench/grpc_driver.py (grpc.aio, a channel per"
            " connection); CPU per create is the process's CPU time in the measured phase over"
            " the creates answered in it (DB: the PostgreSQL backends of the benchmark's"
            " database); machine busy: all processes, share of all cores; others busy: the part"
            " of it that is none of these (other work on a shared machine)",
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
