"""Prometheus metrics: what the server counts, and the /metrics endpoint that serves them.

A server instance is one process (several instances are several scrape targets, each on its
own COMMS_METRICS_PORT), so the values live in the process's default registry."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

# From a cached GET (about 1 ms) to the gateway's 15 s route timeout.
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15)

RPCS = Counter(
    "comms_rpc_requests", "RPCs answered, by method and gRPC status code", ["method", "code"]
)
RPC_SECONDS = Histogram(
    "comms_rpc_duration_seconds",
    "time from a call's start to its answer, by method and gRPC status code",
    ["method", "code"],
    buckets=_SECONDS,
)
IN_FLIGHT = Gauge("comms_rpc_in_flight", "RPCs being served now", ["method"])
SHED = Counter(
    "comms_rpc_shed",
    "calls refused at once (RESOURCE_EXHAUSTED) because COMMS_MAX_IN_FLIGHT were running or queued",
    ["method"],
)
REPLAYS = Counter(
    "comms_idempotent_replays",
    "changes answered with an earlier call's first answer (the same Idempotency-Key and body)",
)
BATCH_SIZE = Histogram(
    "comms_store_batch_size",
    "creates committed in one write transaction (SQLite's group commit; 1 on PostgreSQL)",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
COMMIT_SECONDS = Histogram(
    "comms_store_commit_seconds",
    "time of one write transaction, from taking the writer's turn to its commit",
    buckets=_SECONDS,
)
STORE_ERRORS = Counter(
    "comms_store_errors",
    "store failures answered as UNAVAILABLE, by the driver's error class",
    ["error"],
)
POOL_IN_USE = Gauge(
    "comms_store_connections_in_use",
    "database connections of the pool checked out now",
)
POOL_MAX = Gauge(
    "comms_store_connections_max",
    "database connections the pool may open (COMMS_GRPC_WORKERS per process)",
)


def serve(host: str, port: int) -> Any:
    """Serve /metrics on host:port (0: a free port) from a daemon thread; returns the HTTP
    server, whose server_port is the port bound."""
    server, _ = start_http_server(port, host, REGISTRY)
    return server
