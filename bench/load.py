"""The two load generators, both closed loops (each connection sends its next request when the
last one is answered) for a fixed time, after which every connection finishes the request it
has in flight and stops: so each create stored has its response counted. Each runs one
operation: "create" (BODY, valid, three steps) or "get" (by id, going through a list of ids
in turn, one a line in a file).

- HTTP (through Envoy, or to the peer): wrk (C, one thread) with bench/load.lua.
- Native gRPC straight to the server: bench/grpc_driver.py, grpc.aio with one channel (one TCP
  connection) per connection. Not h2load: h2load sees HTTP 200 for every gRPC call, failed or
  not (grpc-status travels in trailers it does not read), and at the end of its time it drops
  the calls in flight, so neither errors nor rows == successes could be checked; the driver
  reads each call's status. It costs more CPU than h2load would, which the table shows."""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stack import usage

# The create every request makes: valid, three steps (so one create is 1 + 3 rows).
BODY: dict[str, Any] = {
    "brand_id": "brand_bench",
    "name": "Benchmark series",
    "description": "Three steps, one per channel kind",
    "steps": [
        {"position": 0, "channel": "email", "template_key": "welcome", "delay_minutes": 0},
        {"position": 1, "channel": "sms", "template_key": "nudge", "delay_minutes": 1440},
        {"position": 2, "channel": "in_app", "template_key": "tips", "delay_minutes": 2880},
    ],
}
STEPS_PER_CREATE = len(BODY["steps"])
# The longest a request may take, and the most a phase may overrun its time to drain.
DRAIN_LIMIT_SECONDS = 30
LUA_SCRIPT = Path(__file__).with_name("load.lua")
OPERATIONS = ("create", "get")


@dataclass(frozen=True)
class Phase:
    """One run of a load generator for a fixed time, drained."""

    seconds: float  # from the first request sent to the last response received
    statuses: dict[str, int]  # HTTP status ("201") or gRPC code name ("OK") -> responses
    socket_errors: int  # connections that failed, requests that got no answer in time
    p50_ms: float
    p90_ms: float
    p99_ms: float
    generator_cpu_seconds: float

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if s == "OK" or s.startswith("2"))

    @property
    def errors(self) -> int:
        return sum(self.statuses.values()) - self.ok + self.socket_errors

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0


def _phase(result: dict[str, Any], seconds: float, cpu: float) -> Phase:
    return Phase(
        seconds=seconds,
        statuses={str(k): int(v) for k, v in result["statuses"].items()},
        socket_errors=int(result.get("socket_errors", 0)) + int(result.get("timeouts", 0)),
        p50_ms=result["p50_us"] / 1000,
        p90_ms=result["p90_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        generator_cpu_seconds=cpu,
    )


def _children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


class WrkLoad:
    """One operation over HTTP with wrk: create POSTs BODY to url, get GETs url/<id> for the
    ids in the file ids, in turn. One wrk process per phase."""

    def __init__(
        self,
        url: str,
        connections: int,
        workdir: Path,
        token: str | None,
        operation: str = "create",
        ids: Path | None = None,
    ) -> None:
        self.url = url
        self.connections = connections
        self.token = token or ""
        if operation == "get":
            assert ids is not None, "get needs a file of ids"
            self.method, self.file = "GET", ids
        else:
            self.method, self.file = "POST", workdir / "create.json"
            self.file.write_text(json.dumps(BODY))

    def run(self, seconds: float) -> Phase:
        command = [
            "wrk",
            "--threads=1",
            f"--connections={self.connections}",
            f"--duration={math.ceil(seconds) + DRAIN_LIMIT_SECONDS}s",  # a cap: see SIGINT
            f"--timeout={DRAIN_LIMIT_SECONDS}s",
            f"--script={LUA_SCRIPT}",
            self.url,
            "--",
            self.method,
            str(self.file),
            repr(seconds),
            self.token,
        ]
        # wrk is reaped before the next phase starts, so this delta is wrk's CPU alone.
        cpu_before = _children_cpu()
        drained: float | None = None
        result: dict[str, Any] | None = None
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as wrk:
            assert wrk.stdout is not None and wrk.stderr is not None
            for line in wrk.stdout:
                if line.startswith("BENCH_DRAINED "):
                    drained = float(line.split()[1])
                    wrk.send_signal(signal.SIGINT)  # wrk then stops and reports
                elif line.startswith("BENCH_RESULT "):
                    result = json.loads(line.split(" ", 1)[1])
            stderr = wrk.stderr.read()
        if result is None:
            raise RuntimeError(f"wrk gave no result (exit {wrk.returncode}): {stderr.strip()}")
        # Not drained: some request never got an answer; the rows check will show it.
        elapsed = drained if drained is not None else seconds + DRAIN_LIMIT_SECONDS
        return _phase(result, elapsed, _children_cpu() - cpu_before)


class GrpcLoad:
    """CreateSequence, or GetSequence of the ids in a file in turn, straight to the server with
    bench/grpc_driver.py, one process per cell (started and connected before any phase, so its
    start-up is not measured)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._process = process

    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        target: str,
        connections: int,
        token: str | None,
        operation: str = "create",
        ids: Path | None = None,
    ) -> Iterator[GrpcLoad]:
        env = os.environ | {"BENCH_TOKEN": token or ""}
        command = [sys.executable, "-m", "bench.grpc_driver", target, str(connections), operation]
        command += [str(ids)] if operation == "get" and ids else []
        with subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[1],  # where `-m bench...` is found
        ) as process:
            load = cls(process)
            try:
                if load._readline() != "ready":
                    raise RuntimeError("the gRPC driver did not connect")
                yield load
            finally:
                assert process.stdin is not None
                process.stdin.close()  # the driver exits at the end of its input
                process.wait(DRAIN_LIMIT_SECONDS)

    def _readline(self) -> str:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the gRPC driver exited with {self._process.wait()}")
        return line.strip()

    def run(self, seconds: float) -> Phase:
        assert self._process.stdin is not None
        cpu_before = usage(self._process.pid).cpu_seconds
        self._process.stdin.write(f"run {seconds!r}\n")
        self._process.stdin.flush()
        result = json.loads(self._readline())
        cpu = usage(self._process.pid).cpu_seconds - cpu_before
        return _phase(result, float(result["seconds"]), cpu)
