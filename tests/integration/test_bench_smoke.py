"""A few seconds of `make bench` on one configuration (SQLite, 4 connections): every create
answered 2xx (gRPC: OK) is stored, and none fails. It checks the harness, never speed: timed
figures come from `make bench` alone."""

from __future__ import annotations

import shutil

import pytest

from bench import run


def test_bench_stores_every_create_it_counts(capsys: pytest.CaptureFixture[str]) -> None:
    # HTTP needs wrk, which `make bench` installs; without it the gRPC half still runs.
    paths = "http,grpc" if shutil.which("wrk") else "grpc"
    status = run.main(
        ["--duration", "2", "--warmup", "0.5", "--connections", "4", "--paths", paths, "--no-save"]
    )
    table = capsys.readouterr().out
    assert status == 0, table  # 1: an error, or rows stored != successes counted
    cells = [line for line in table.splitlines() if line.startswith(("| HTTP", "| gRPC"))]
    assert len(cells) == len(paths.split(",")), table
    assert all(line.endswith(" yes |") for line in cells), table
