"""What comms.calls adds to each call, in server CPU: the request id, the metrics and the
JSON log line, around a handler that does nothing (README "What it costs").

    .venv/bin/python -m bench.calls_cost [--calls N]

Run in a loop of process time, alone, so that the shared machine's noise, which swamps a
few tens of microseconds in `make bench`, does not."""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any

from comms import calls, logs

METHOD = "/comms.v1.SequenceService/CreateSequence"


class _Context:
    """The little of grpc.ServicerContext that the wrapper uses, as a create answers."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer x"), ("user-agent", "grpc-python"))

    def code(self) -> None:
        return None

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def send_initial_metadata(self, metadata: Any) -> None:
        pass


class _Handler:
    request_deserializer = response_serializer = None

    @staticmethod
    def unary_unary(request: Any, context: Any) -> str:
        context.send_initial_metadata((("x-http-code", "201"),))
        return "created"


class _Request:
    brand_id = "brand_123"


def _microseconds_per_call(serve: Any, count: int) -> float:
    context, request = _Context(), _Request()
    started = time.process_time()
    for _ in range(count):
        serve(request, context)
    return (time.process_time() - started) / count * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.calls_cost", description=__doc__)
    parser.add_argument("--calls", type=int, default=50_000)
    args = parser.parse_args(argv)
    with open(os.devnull, "w") as sink:
        logs.configure("INFO", "json", sink)
        observed = calls.CallInterceptor().wrap(_Handler, METHOD).unary_unary
        _microseconds_per_call(observed, args.calls // 10)  # warm up
        full = _microseconds_per_call(observed, args.calls)
        logging.getLogger().setLevel(logging.WARNING)
        quiet = _microseconds_per_call(observed, args.calls)
        bare = _microseconds_per_call(_Handler.unary_unary, args.calls)
    print(f"request id, metrics and JSON log line: {full - bare:.1f} µs of CPU per call")
    print(f"  of which the log line: {full - quiet:.1f} µs; without it: {quiet - bare:.1f} µs")


if __name__ == "__main__":
    main()
