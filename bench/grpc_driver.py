"""Native gRPC load for `make bench`, run as its own process so that its CPU is measured apart
from the harness and the server:

    python -m bench.grpc_driver HOST:PORT CONNECTIONS      (bearer token in $BENCH_TOKEN)

It opens CONNECTIONS channels, each its own TCP connection, prints "ready", then for each line
"run SECONDS" on its input keeps one CreateSequence in flight on every channel for SECONDS,
lets each finish the call it has in flight, and prints one JSON line: the seconds from first
call to last answer, the count of each status code, and latency percentiles in microseconds.
It exits at the end of its input."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from collections import Counter
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


async def run_phase(
    stubs: list[pb_grpc.SequenceServiceStub],
    request: pb.CreateSequenceRequest,
    metadata: tuple[tuple[str, str], ...],
    seconds: float,
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    start = time.perf_counter()
    deadline = start + seconds

    async def connection(stub: pb_grpc.SequenceServiceStub) -> None:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                await stub.CreateSequence(request, metadata=metadata, timeout=DRAIN_LIMIT_SECONDS)
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


async def main(target: str, connections: int) -> None:
    token = os.environ.get("BENCH_TOKEN", "")
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    request = json_format.ParseDict(BODY, pb.CreateSequenceRequest())
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
            result = await run_phase(stubs, request, metadata, float(seconds))
            print(json.dumps(result), flush=True)
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
