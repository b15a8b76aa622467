"""A few seconds of `make bench` on one configuration (SQLite, 4 connections): every create
answered 2xx (gRPC: OK) is stored, and none fails. It checks the harness, never speed: timed
figures come from `make bench` alone."""

from __future__ import annotations

import shutil

import pytest

from bench import run


def _rows(table: str) -> list[dict[str, str]]:
    """The benchmark table's rows, each as {column: value}."""
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    header, *rows = ([c.strip() for c in line.split("|")[1:-1]] for line in lines)
    return [dict(zip(header, row, strict=True)) for row in rows if not row[0].startswith("-")]


def test_bench_stores_every_create_it_counts(capsys: pytest.CaptureFixture[str]) -> None:
    # HTTP needs wrk, which `make bench` installs; without it the gRPC half still runs.
    paths = "http,grpc" if shutil.which("wrk") else "grpc"
    status = run.main(
        ["--duration", "2", "--warmup", "0.5", "--connections", "4", "--paths", paths, "--no-save"]
    )
    table = capsys.readouterr().out
    assert status == 0, table  # 1: the rows stored differ from the successes counted
    cells = _rows(table)
    assert len(cells) == len(paths.split(",")), table
    for cell in cells:
        assert cell["errors"] == "0", table
        assert int(cell["rows"]) == int(cell["2xx"]) > 0, table
