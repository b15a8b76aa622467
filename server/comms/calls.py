"""Every call, seen from outside its handler: its request id, one log line and its metrics.

The request id is the caller's `x-request-id` (Envoy keeps a client's or makes one), or one
made here for a direct gRPC caller; it goes back in the trailing metadata and is on every log
line written while the call runs (logs.py reads it from here)."""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import peewee as pw

from comms import metrics
from comms.httpapi import HTTP_CODE_HEADER, REPLAYED
from comms.interceptors import UnaryWrapper, unary_handler
from comms.v1 import health_pb2

log = logging.getLogger(__name__)

REQUEST_ID = "x-request-id"
# A caller's id is kept if it is printable ASCII of at most this length, else replaced.
MAX_REQUEST_ID = 200
# What a handler's initial metadata says of its answer: the HTTP status it asks for, and
# a replay (idempotency.REPLAYED: not imported, as idempotency imports auth, which imports
# this module).
_PROBES = health_pb2.DESCRIPTOR.services_by_name["HealthService"].full_name + "/"


@dataclass
class Call:
    """What the log line of one call says."""

    request_id: str
    method: str
    subject: str | None = None
    http_status: int | None = None


_current: contextvars.ContextVar[Call | None] = contextvars.ContextVar("comms_call", default=None)


def current() -> Call | None:
    """The call being served in this thread, if any."""
    return _current.get()


def note_subject(subject: str) -> None:
    """Record the verified caller (auth.py), for the call's log line."""
    call = _current.get()
    if call is not None:
        call.subject = subject


def request_id(metadata: Sequence[tuple[str, str | bytes]]) -> str:
    """The caller's x-request-id if it is usable, else a new one (a UUID, as Envoy makes)."""
    for key, value in metadata:
        if key == REQUEST_ID and isinstance(value, str):
            if 0 < len(value) <= MAX_REQUEST_ID and value.isascii() and value.isprintable():
                return value
            break
    return str(uuid.uuid4())


class _Observed:
    """The handler's context, watched for what it answers in its initial metadata."""

    def __init__(self, context: grpc.ServicerContext, call: Call) -> None:
        self._context = context
        self._call = call

    def send_initial_metadata(self, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        for key, value in metadata:
            if key == HTTP_CODE_HEADER and str(value).isdigit():
                self._call.http_status = int(value)
            elif (key, value) == REPLAYED:
                metrics.REPLAYS.inc()
        self._context.send_initial_metadata(metadata)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class CallInterceptor(UnaryWrapper):
    """Outermost interceptor: wraps each unary method (comms RPCs and health checks; the
    reflection streams pass untouched) with the request id, the log line and the metrics."""

    def __init__(self, database: pw.Database | None = None) -> None:
        super().__init__()
        self._server: Any = None
        self._pool = database
        if database is not None:
            metrics.POOL_MAX.set(getattr(self._pool, "_max_connections", 0) or 0)

    def watch(self, server: grpc.Server) -> None:
        """The server whose shed calls are counted (it exists only after the interceptors)."""
        self._server = server

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = super().intercept_service(continuation, details)
        if details.method in self._wrapped and self._is_full():
            metrics.SHED.labels(details.method.lstrip("/")).inc()
        return handler

    def _is_full(self) -> bool:
        """Will grpc refuse this call for its concurrency limit? grpc decides under the same
        lock this runs under (its polling thread), from these two numbers, and has no hook
        or counter of its own for it (grpcio 1.85's _server._ServerState; a test proves the
        count exact)."""
        state: Any = getattr(self._server, "_state", None)
        limit = getattr(state, "maximum_concurrent_rpcs", None)
        return limit is not None and bool(state.active_rpc_count >= limit)

    def wrap(self, handler: Any, method: str) -> Any:
        serve = handler.unary_unary
        name = method.lstrip("/")
        # Health checks and probes (Envoy's, every second; a load balancer's): DEBUG only.
        quiet = not name.startswith("comms.") or name.startswith(_PROBES)
        in_flight = metrics.IN_FLIGHT.labels(name)

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            call = Call(request_id(context.invocation_metadata()), name)
            reset = _current.set(call)
            in_flight.inc()
            self._pool_use()
            failed = True
            try:
                answer = serve(request, _Observed(context, call))
                failed = False
                return answer
            finally:
                elapsed = time.perf_counter() - started
                code = _code(context, failed)
                context.set_trailing_metadata(
                    (*(context.trailing_metadata() or ()), (REQUEST_ID, call.request_id))
                )
                in_flight.dec()
                self._pool_use()
                metrics.RPCS.labels(name, code).inc()
                metrics.RPC_SECONDS.labels(name, code).observe(elapsed)
                _log_line(call, code, elapsed, getattr(request, "brand_id", None), quiet)
                _current.reset(reset)

        return unary_handler(handler, observed)

    def _pool_use(self) -> None:
        if self._pool is not None:
            metrics.POOL_IN_USE.set(len(getattr(self._pool, "_in_use", ())))


def _code(context: grpc.ServicerContext, failed: bool) -> str:
    """The call's gRPC status name: what the handler set or aborted with; an exception that
    escaped without a status is grpc's UNKNOWN."""
    code = context.code()  # type: ignore[attr-defined]  # grpcio has it; its stubs not
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN" if failed else "OK"


def _log_line(call: Call, code: str, elapsed: float, brand: Any, quiet: bool) -> None:
    # Only what identifies the call: never a name, a description or a template key.
    fields = {
        "request_id": call.request_id,
        "method": call.method,
        "grpc_code": code,
        "http_status": call.http_status,
        "duration_ms": round(elapsed * 1000, 3),
        "brand": brand or None,
        "subject": call.subject,
    }
    log.log(logging.DEBUG if quiet else logging.INFO, "call", extra=fields)
