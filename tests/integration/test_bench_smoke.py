"""A few seconds of `make bench` on one configuration (SQLite, 4 connections, creates and gets,
over both paths, the same against bench/floor.py, and against a stand-in peer): every create
answered 2xx (gRPC: OK) is stored, a get stores nothing, and none fails. It checks the harness, never speed: timed figures come
from `make bench` alone. The real peer (issue 14) is not in the repository, so `--peer` runs
here on a minimal ASGI app written by the test, which uvicorn serves as it would the peer."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from bench import calls_cost, run
from bench.load import Phase
from bench.stack import Usage

# HTTP needs wrk, which `make bench` installs; without it the gRPC half still runs.
HAVE_WRK = bool(shutil.which("wrk"))

# The peer's routes and nothing else: POST /v1/sequences stores an id, GET .../{id} finds it.
STAND_IN = """
import json, uuid

stored = set()


async def app(scope, receive, send):
    assert scope["type"] == "http"
    while (await receive()).get("more_body"):
        pass
    path = scope["path"].rstrip("/")
    if scope["method"] == "POST" and path == "/v1/sequences":
        status, body = 201, {"id": str(uuid.uuid4())}
        stored.add(body["id"])
    elif scope["method"] == "GET" and path.rpartition("/")[2] in stored:
        status, body = 200, {"id": path.rpartition("/")[2]}
    else:
        status, body = 404, {"error": "not_found"}
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})
"""


def _tables(text: str) -> list[list[dict[str, str]]]:
    """Each markdown table in the output, its rows as {column: value}."""
    tables: list[list[dict[str, str]]] = []
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            header, *rows = ([c.strip() for c in row.split("|")[1:-1]] for row in block)
            tables.append(
                [dict(zip(header, r, strict=True)) for r in rows if not set(r[0]) <= {"-", ":"}]
            )
        block = []
    return tables


def test_bench_counts_creates_and_gets_and_compares_a_peer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    peer = tmp_path / "stand_in_peer.py"
    peer.write_text(STAND_IN)
    status = run.main(
        ["--duration", "1", "--warmup", "0.3", "--connections", "4", "--no-save"]
        + (["--peer", str(peer)] if HAVE_WRK else ["--paths", "grpc"])
    )  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0, out  # 1: the rows stored differ from what the answers say
    cells, goodput = _tables(out)[:2]
    seen = [(c["operation"], c["path"]) for c in cells]
    paths, floors = ["gRPC → server"], ["gRPC → floor"]
    if HAVE_WRK:
        paths, floors = ["HTTP → Envoy", *paths], [*floors, "HTTP → Envoy → floor"]
    ours = [(op, path) for op in ("create", "get") for path in paths]
    ours += [(op, path) for op in ("create", "get") for path in floors]  # then bench/floor.py
    ours += [("create", "HTTP → peer"), ("get", "HTTP → peer")] if HAVE_WRK else []
    assert seen == ours, out
    for cell in cells:
        assert cell["errors"] == "0", out
        assert int(cell["2xx"]) > 0, out
        if cell["path"] == "HTTP → Envoy → floor":
            assert cell["Envoy CPU ms/req"] != "-", out
        if "peer" in cell["path"] or "floor" in cell["path"]:  # no store the benchmark counts
            assert (cell["rows"], cell["rows as expected"]) == ("-", "-"), out
        else:
            stored = int(cell["2xx"]) if cell["operation"] == "create" else 0
            assert (int(cell["rows"]), cell["rows as expected"]) == (stored, "yes"), out
    assert f"+ {run.SEEDED} seeded)" in out and "(equal)" in out, out
    # Goodput: one row per operation and path; comms' rows divided by the peer's.
    rates = {(g["operation"], g["path"]): g for g in goodput}
    assert set(rates) == set(seen), out
    if not HAVE_WRK:
        return
    best_rate = "best req/s, p99 ≤ 50 ms"
    # How fast each side was is not the test's business (a busy machine may put a side's every
    # p99 above the SLO: "none"); the ratio shown is the one the two rates give.
    for operation in ("create", "get"):
        peer_best = rates[operation, "HTTP → peer"][best_rate]
        for path in ("HTTP → Envoy", "gRPC → server"):
            best = rates[operation, path][best_rate]
            ratio = rates[operation, path]["÷ peer"]
            if "none" in (best, peer_best):
                assert ratio == "-", out
            else:
                assert float(ratio) == pytest.approx(int(best) / int(peer_best), abs=0.01), out
    assert "- create: goodput through Envoy ≥ 2.5x the peer's:" in out, out
    # Each CPU target is shown beside the same figure with nothing of comms behind grpcio.
    floor = re.compile(r"\(with bench/floor\.py as the server, (gRPC|HTTP) → [^:]+: \d+\.\d\d\)")
    cpu_lines = [line for line in out.splitlines() if " CPU ≤ " in line]
    # Server and Envoy, for each operation whose Envoy path had a cell within the SLO.
    timely = [op for op in ("create", "get") if rates[op, "HTTP → Envoy"][best_rate] != "none"]
    assert len(cpu_lines) == 2 * len(timely), out
    assert all(floor.search(line) for line in cpu_lines), out


def _cell(rate: float, p99_ms: float, errors: int = 0, path: str = "http") -> run.Cell:
    phase = Phase(10.0, {"200": int(rate * 10), "503": errors}, 0, 1.0, 2.0, p99_ms, 0.0)
    nothing = Usage(0.0, 0, 0, 1)
    measured = run.Measured(phase, 1.0, 0.5, 0.0, 0.5, 0.0, nothing, nothing)
    return run.Cell("get", path, 4, None, measured, 0, 0)


def test_goodput_is_the_best_rate_within_the_slo_without_errors() -> None:
    fast_but_late, fast_but_failing = _cell(900, 50.1), _cell(800, 10, errors=1)
    within, slower = _cell(700, 50.0), _cell(600, 5)
    cells = [fast_but_late, fast_but_failing, within, slower, _cell(350, 20, path="peer")]
    assert run.best(cells, "get", "http") is within
    assert run.best(cells, "get", "grpc") is None
    rows = _tables(run.goodput_table(cells))[0]
    assert [(r["path"], r["best req/s, p99 ≤ 50 ms"], r["÷ peer"]) for r in rows] == [
        ("HTTP → Envoy", "700", "2.00"),
        ("HTTP → peer", "350", "-"),
    ]
    assert run.best([fast_but_late], "get", "http") is None


def test_bench_profile_names_the_servers_functions(capsys: pytest.CaptureFixture[str]) -> None:
    path = "http" if HAVE_WRK else "grpc"
    status = run.main(
        ["--duration", "1", "--warmup", "0", "--connections", "1", "--operations", "get",
         "--paths", path, "--profile", "--no-save"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0, out
    profile = out.split("## Profiles", 1)[1]
    assert f"### get, {run.PATH_NAMES[path]}, 16 connections" in profile, out
    server, envoy = _tables(profile)[0], profile.split("\nEnvoy", 1)[1]
    assert 0 < len(server) <= 15, out
    assert any(("comms/" in r["function"] or "grpc/" in r["function"]) for r in server), out
    assert "\nThe server's samples by what the thread runs: `" in profile, out
    if not HAVE_WRK:
        assert envoy.startswith(": no profile: no Envoy in this cell"), out
    else:
        assert envoy.startswith((" (perf cpu-clock", ": no profile: perf is not installed")), out


def test_calls_cost_measures_the_wrapper_calls_py_builds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls_cost.main(["--calls", "200"])  # it logs to /dev/null (tests.conftest restores it)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(
        r"request id, metrics and JSON log line: -?\d+\.\d µs of CPU per call", lines[0]
    )
    assert re.fullmatch(
        r"  of which the log line: -?\d+\.\d µs; without it: -?\d+\.\d µs", lines[1]
    )


def test_each_cpu_target_shows_the_floors_figure_beside_it() -> None:
    # 1 s of server CPU and 0.5 s of Envoy's over 10 s at the rate given: per request, 1000 / (10
    # * rate) and 500 / (10 * rate) ms.
    ours, floor, floor_http = (
        _cell(400, 20),
        _cell(2000, 10, path="floor"),
        _cell(1000, 10, path="floor_http"),
    )
    lines = run.target_lines([ours, floor, floor_http], "sqlite")
    assert lines[1:3] == [
        "- get: server CPU ≤ 0.25 ms/req (at the goodput cell, 4 connections): 0.25"
        " (with bench/floor.py as the server, gRPC → floor: 0.05) — met",
        "- get: Envoy CPU ≤ 0.2 ms/req (at the goodput cell, 4 connections): 0.12"
        " (with bench/floor.py as the server, HTTP → Envoy → floor: 0.05) — met",
    ]
