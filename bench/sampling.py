"""`make bench --profile`: where the server's and Envoy's CPU goes in one cell, sampled from
outside while the cell's measured phase runs.

- The server by py-spy, `record --gil --native`: only the thread holding the GIL is sampled
  (in one process the GIL is what the Python work queues on; threads waiting for it or for a
  lock would otherwise fill the profile with futex waits), native frames included so that
  grpc's C core and SQLite show beside the Python ones. The samples over the most there could
  be (rate x seconds x processes) is roughly how busy the GIL was (py-spy may fall behind its
  rate on a loaded machine, which makes it an underestimate).
- Envoy by perf (cpu-clock samples of every thread), when perf is installed and may sample.

Each gives its top functions by own samples (the function running when sampled), with the
share of samples it was anywhere on the stack ("total"), and the share per binary."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.stack import usage

PY_SPY = str(Path(sys.executable).parent / "py-spy")
TOP = 15
SPY_RATE = 200  # samples a second
PERF_RATE = 250
_LINE = re.compile(r":\d+\)$")  # "f (file.py:12)" -> one entry per function, not per line


def _short(frame: str) -> str:
    """A frame without its line number and with its file's path cut to what names it."""
    frame = _LINE.sub(")", frame)
    name, _, where = frame.partition(" (")
    for marker in ("site-packages/", "/server/", "/lib/python3."):
        if marker in where:
            where = where.split(marker, 1)[1]
            where = where.split("/", 1)[1] if marker == "/lib/python3." else where
    return f"{name} ({where}" if where else name


@dataclass(frozen=True)
class Profile:
    """Samples per function: own (the function running when sampled) and total (anywhere on
    the stack), from collapsed stacks ("frame;frame;leaf N" a line)."""

    samples: int
    own: Counter[str]
    total: Counter[str]
    entries: Counter[str]  # what each sampled thread runs: its first frame past threading.py

    @classmethod
    def parse(cls, collapsed: str) -> Profile:
        own: Counter[str] = Counter()
        total: Counter[str] = Counter()
        entries: Counter[str] = Counter()
        for line in collapsed.splitlines():
            stack, _, n = line.rpartition(" ")
            if stack and n.isdigit():
                frames = [_short(f) for f in stack.split(";")]
                own[frames[-1]] += int(n)
                total.update(dict.fromkeys(frames, int(n)))
                python = [f for f in frames if f.endswith(".py)") and "(threading.py)" not in f]
                entries[python[0] if python else "no Python frame"] += int(n)
        return cls(sum(own.values()), own, total, entries)

    def table(self, title: str, count: int = TOP) -> list[str]:
        lines = [f"{title}: top {count} by own samples", "", "| own | total | function |"]
        lines += ["|---:|---:|---|"]
        lines += [
            f"| {n / self.samples:.1%} | {self.total[f] / self.samples:.1%} | `{f}` |"
            for f, n in self.own.most_common(count)
        ]
        return lines

    def by_entry(self) -> str:
        """Samples per thread kind (grpc's poll loop, the call workers, ...), most first."""
        return ", ".join(f"`{e}` {n / self.samples:.0%}" for e, n in self.entries.most_common(6))

    def by_binary(self) -> str:
        """Own samples per binary (the part in brackets after a native frame's name)."""
        binaries: Counter[str] = Counter()
        for function, n in self.own.items():
            binaries[function.rpartition(" (")[2].rstrip(")")] += n
        return ", ".join(f"{b} {n / self.samples:.0%}" for b, n in binaries.most_common())


class Sampler:
    """py-spy on the server's processes and perf on Envoy for `seconds`, started at once;
    report() waits for both and gives their tables (or why there is none)."""

    def __init__(self, server_pid: int, envoy_pid: int | None, seconds: float, out: Path):
        self.out = out
        self.seconds = max(1, math.floor(seconds))
        self.processes = usage(server_pid).processes
        self.spy = subprocess.Popen(
            [
                *(PY_SPY, "record", "--pid", str(server_pid), "--duration", str(self.seconds)),
                *("--rate", str(SPY_RATE), "--gil", "--native", "--subprocesses"),
                *("--format", "raw", "--output", str(out.with_suffix(".spy"))),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.perf: subprocess.Popen[str] | None = None
        self.perf_missing = "" if shutil.which("perf") else "perf is not installed"
        if envoy_pid is not None and not self.perf_missing:
            self.perf = subprocess.Popen(
                [
                    *("perf", "record", "-e", "cpu-clock", "-F", str(PERF_RATE), "-g"),
                    *("-p", str(envoy_pid), "-o", str(out.with_suffix(".perf"))),
                    *("--", "sleep", str(self.seconds)),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def report(self) -> list[str]:
        spy_output, _ = self.spy.communicate(timeout=120)
        raw = self.out.with_suffix(".spy")
        if self.spy.returncode != 0 or not raw.exists():
            return [f"Server: py-spy failed: {spy_output.strip()[-500:]}", "", *self._envoy()]
        server = Profile.parse(raw.read_text())
        most = SPY_RATE * self.seconds * self.processes
        held = f"the GIL held in {server.samples} of ~{most} samples ({server.samples / most:.0%})"
        return [
            *server.table(f"Server (py-spy, {held})"),
            "",
            f"The server's samples by what the thread runs: {server.by_entry()}.",
            "",
            *self._envoy(),
        ]

    def _envoy(self) -> list[str]:
        if self.perf is None:
            return [f"Envoy: no profile: {self.perf_missing or 'no Envoy in this cell'}"]
        perf_output, _ = self.perf.communicate(timeout=120)
        data = self.out.with_suffix(".perf")
        if self.perf.returncode != 0 or not data.exists():
            return [f"Envoy: perf failed: {perf_output.strip()[-500:]}"]
        script = subprocess.run(
            ["perf", "script", "-i", str(data), "-F", "ip,sym,dso"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        envoy = Profile.parse(_fold_perf(script.stdout))
        if not envoy.samples:
            return [f"Envoy: perf recorded no samples: {script.stderr.strip()[-500:]}"]
        busy = f"{envoy.samples / (PERF_RATE * self.seconds):.0%} of a core"
        return [
            *envoy.table(f"Envoy (perf cpu-clock, {envoy.samples} samples, {busy})"),
            "",
            f"Envoy's own samples by binary: {envoy.by_binary()}"
            " ([unknown] in envoy: its binary has no symbol table).",
        ]


def _fold_perf(script: str) -> str:
    """`perf script` call chains (leaf first, one frame a line, a blank line between samples)
    as collapsed stacks (root first, leaf last, "... 1" a line)."""
    lines = []
    for sample in script.split("\n\n"):
        frames = []
        for line in sample.strip().splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2:
                sym, _, dso = parts[1].rpartition(" (")
                frames.append(f"{sym or '?'} ({Path(dso.rstrip(')')).name})")
        if frames:
            lines.append(";".join(reversed(frames)) + " 1")
    return "\n".join(lines)
