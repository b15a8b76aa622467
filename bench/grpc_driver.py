"""Native gRPC load for `make bench`, run as its own process so that its CPU is measured apart
from the harness and the server:

    python -m bench.grpc_driver HOST:PORT CONNECTIONS [create | get IDS_FILE]
                                                            (bearer token in $BENCH_TOKEN)

It opens CONNECTIONS channels, each its own TCP connection, prints "ready", then for each line
"run SECONDS" on its input keeps one call in flight on every channel for SECONDS (create:
CreateSequence of bench.load.BODY; get: GetSequence of the ids in IDS_FILE, one a line, in turn),
lets each finish the call it has in flight, and prints one JSON line: the seconds from first
call to last answer, the count of each status code, and latency percentiles in microseconds.
It exits at the end of its input."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from bench.load import BODY, DRAIN_LIMIT_SECONDS
from comms.v1 import sequences_pb2 as pb
from comms.v1 import sequences_pb2_grpc as pb_grpc


def percentile(ordered: list[float], p: float) -> float:
    """Nearest rank: the smallest value that at least p% of the values do not exceed."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


Call = Callable[[pb_grpc.SequenceServiceStub], Awaitable[pb.Sequence]]


def make_call(operation: str, ids_file: str | None, metadata: tuple[tuple[str, str], ...]) -> Call:
    """What each connection does once per turn."""
    if operation == "create":
        create = json_format.ParseDict(BODY, pb.CreateSequenceRequest())
        return lambda stub: stub.CreateSequence(
            create, metadata=metadata, timeout=DRAIN_LIMIT_SECONDS
        )
    if operation != "get" or not ids_file:
        raise SystemExit(f"unknown operation {operation!r}: create, or get IDS_FILE")
    gets = itertools.cycle(
        [pb.GetSequenceRequest(id=line) for line in Path(ids_file).read_text().split()]
    )
    return lambda stub: stub.GetSequence(next(gets), metadata=metadata, timeout=DRAIN_LIMIT_SECONDS)


async def run_phase(
    stubs: list[pb_grpc.SequenceServiceStub], call: Call, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    start = time.perf_counter()
    deadline = start + seconds

    async def connection(stub: pb_grpc.SequenceServiceStub) -> None:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                await call(stub)
                status = "OK"
            except grpc.aio.AioRpcError as error:
                status = error.code().name
            latencies.append(time.perf_counter() - sent)
            statuses[status] += 1

    await asyncio.gather(*(connection(stub) for stub in stubs))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "seconds": elapsed,
        "statuses": dict(statuses),
        **{f"p{p}_us": round(percentile(latencies, p) * 1e6) for p in (50, 90, 99)},
        "max_us": round(latencies[-1] * 1e6) if latencies else 0,
    }


async def main(target: str, connections: int, operation: str, ids_file: str | None) -> None:
    token = os.environ.get("BENCH_TOKEN", "")
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    call = make_call(operation, ids_file, metadata)
    # A local subchannel pool gives each channel its own TCP connection.
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(connections)
    ]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(channel.channel_ready() for channel in channels)), timeout=30
        )
        stubs = [pb_grpc.SequenceServiceStub(channel) for channel in channels]
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command, seconds = line.split()
            if command != "run":
                raise SystemExit(f"unknown command {command!r}")
            result = await run_phase(stubs, call, float(seconds))
            print(json.dumps(result), flush=True)
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


if __name__ == "__main__":
    args = sys.argv[1:]
    operation = args[2] if len(args) > 2 else "create"
    asyncio.run(main(args[0], int(args[1]), operation, args[3] if len(args) > 3 else None))
