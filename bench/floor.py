"""The floor under the server's CPU per call: what grpcio itself costs, with nothing of comms.

    python -m bench.floor PORT

Serves comms.v1.SequenceService on 127.0.0.1:PORT the way `comms serve` does (grpc.server
over a thread pool of COMMS_GRPC_WORKERS threads, read as `comms serve` reads it), but
CreateSequence and GetSequence answer one fixed Sequence of three steps at once: no
interceptors, token, store, validation, metrics or log line (grpc.health.v1 says SERVING, so
that Envoy sends it calls). Prints "ready" once it serves. `make bench` drives it with
bench/grpc_driver.py like the real server, so its CPU per call is the part of the real one
that no change to comms' own code can remove (issue 14's server CPU targets are read against
it)."""

from __future__ import annotations

import sys
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2_grpc

from bench.load import BODY
from comms import config, convert
from comms.v1 import sequences_pb2 as pb
from comms.v1 import sequences_pb2_grpc as pb_grpc

# What a create (or a get) of bench.load.BODY answers, built as the server builds it.
ANSWER = convert.sequence_message(
    *convert.rows_from_request(
        json_format.ParseDict(BODY, pb.CreateSequenceRequest()), convert.utc_now()
    )
)


class Fixed(pb_grpc.SequenceServiceServicer):
    def CreateSequence(self, request: Any, context: grpc.ServicerContext) -> pb.Sequence:
        return ANSWER

    def GetSequence(self, request: Any, context: grpc.ServicerContext) -> pb.Sequence:
        return ANSWER


def main(port: int) -> None:
    workers = config.load().grpc_workers
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    pb_grpc.add_SequenceServiceServicer_to_server(Fixed(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)  # for Envoy
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main(int(sys.argv[1]))
