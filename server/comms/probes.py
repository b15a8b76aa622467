"""comms.v1.HealthService: the HTTP health probes (GET /healthz, GET /readyz), open to all."""

from __future__ import annotations

import grpc
import peewee as pw
from grpc_health.v1 import health, health_pb2

from comms.errors import RpcFailure
from comms.service import answers_errors
from comms.v1 import health_pb2 as pb
from comms.v1 import health_pb2_grpc as pb_grpc


class HealthService(pb_grpc.HealthServiceServicer):
    """Liveness asks nothing; readiness asks the grpc.health.v1 status that the gateway's
    health checks read (NOT_SERVING once the server drains) and the store."""

    def __init__(self, database: pw.Database, status: health.HealthServicer, service: str) -> None:
        self._db = database
        self._status = status
        self._asked = health_pb2.HealthCheckRequest(service=service)

    def GetLiveness(
        self, request: pb.GetLivenessRequest, context: grpc.ServicerContext
    ) -> pb.GetLivenessResponse:
        return pb.GetLivenessResponse(status="alive")

    @answers_errors  # a store that cannot be reached: UNAVAILABLE, as for any call
    def GetReadiness(
        self, request: pb.GetReadinessRequest, context: grpc.ServicerContext
    ) -> pb.GetReadinessResponse:
        serving = self._status.Check(self._asked, context).status
        if serving != health_pb2.HealthCheckResponse.SERVING:
            raise RpcFailure(grpc.StatusCode.UNAVAILABLE, "the server is not serving")
        with self._db.connection_context():
            self._db.execute_sql("SELECT 1")
        return pb.GetReadinessResponse(status="ready")
