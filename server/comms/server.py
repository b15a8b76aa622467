"""The gRPC server: SequenceService, the HTTP probes (comms.v1.HealthService), grpc.health.v1
and reflection on one port."""

from __future__ import annotations

import logging
from concurrent import futures
from typing import Any

import grpc
import peewee as pw
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from comms import gateway, httpapi, reflection, tracing
from comms.auth import AuthInterceptor, TokenVerifier
from comms.calls import CallInterceptor
from comms.config import Settings
from comms.probes import HealthService
from comms.service import SequenceService
from comms.unparsable import RefuseUnparsable
from comms.v1 import health_pb2_grpc as comms_health_pb2_grpc
from comms.v1 import sequences_pb2 as pb
from comms.v1 import sequences_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# The service whose grpc.health.v1 status the gateway's health checks ask for.
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SequenceService"].full_name

# Request metadata the server accepts, well above what the gateway forwards: its header
# limit, plus the path again (the transcoder adds x-envoy-original-path), Envoy's own
# headers and HPACK's 32 bytes per entry. Soft and hard limits are equal: between the
# two, grpc-core refuses calls at random.
MAX_METADATA_BYTES = 3 * gateway.MAX_HEADERS_KIB * 1024


class Server:
    """A started gRPC server and the health service that tells Envoy and callers it serves."""

    def __init__(
        self,
        grpc_server: grpc.Server,
        port: int,
        health: health.HealthServicer,
        tracer_provider: Any = None,
    ) -> None:
        self.grpc = grpc_server
        self.port = port
        self._health = health
        self._tracer_provider = tracer_provider

    def stop(self, grace: float) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight ones finish within grace seconds;
        then export the spans still buffered."""
        self._health.enter_graceful_shutdown()
        self.grpc.stop(grace).wait()
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()


def create_server(
    address: str,
    database: pw.Database,
    verifier: TokenVerifier,
    workers: int = 4,
    max_in_flight: int | None = None,
    max_connections: int = Settings.max_connections,
    tracer_provider: Any = None,
) -> Server:
    """Start serving on address ("host:port"; port 0 picks a free one). Every comms RPC
    needs a token that verifier accepts; health and reflection stay open.

    At most max_in_flight calls (default: 32 per worker, so 128 at the default 4) are running
    or queued; beyond that a call is refused at once with RESOURCE_EXHAUSTED, so overload
    cannot grow the queue, the memory and everyone's latency without bound.

    A port another process holds is an error, not a silent share (no SO_REUSEPORT): each
    server instance is one process on one address, and the gateway lists them all.

    Past max_connections open connections a new one is closed at once.

    Every call gets a request id, a log line and its metrics (calls.py), and with an
    OpenTelemetry tracer_provider a span too."""
    calls = CallInterceptor(database)
    traced = [tracing.server_interceptor(tracer_provider)] if tracer_provider else []
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
        interceptors=[calls, *traced, AuthInterceptor(verifier), RefuseUnparsable()],
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
            ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
            ("grpc.max_allowed_incoming_connections", max_connections),
        ],
        maximum_concurrent_rpcs=max_in_flight or 32 * workers,
    )
    calls.watch(grpc_server)
    pb_grpc.add_SequenceServiceServicer_to_server(SequenceService(database), grpc_server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    probes = HealthService(database, health_servicer, SERVICE_NAME)
    comms_health_pb2_grpc.add_HealthServiceServicer_to_server(probes, grpc_server)
    reflection.enable(grpc_server, (*httpapi.SERVICES, health.SERVICE_NAME))
    port = grpc_server.add_insecure_port(address)
    grpc_server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Server(grpc_server, port, health_servicer, tracer_provider)
