"""The SequenceService servicer: validate -> one transaction -> convert."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import peewee as pw
from google.rpc import error_details_pb2

from comms import auth, convert, httpapi, idempotency, metrics, paging, store, validation, writer
from comms.errors import RpcFailure
from comms.v1 import sequences_pb2 as pb
from comms.v1 import sequences_pb2_grpc as pb_grpc
from comms.validation import FieldViolation

log = logging.getLogger(__name__)

# Violations listed in one error: the message and details travel as gRPC trailers, which
# clients cap at 8 KiB by default.
MAX_REPORTED_VIOLATIONS = 20


def invalid_argument(violations: list[FieldViolation]) -> RpcFailure:
    shown = violations[:MAX_REPORTED_VIOLATIONS]
    message = "; ".join(map(str, shown))
    if len(violations) > len(shown):
        message += f"; and {len(violations) - len(shown)} more violations"
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in shown
        ]
    )
    return RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, message, details=[bad_request])


def not_found(sequence_id: str) -> RpcFailure:
    shown = sequence_id if len(sequence_id) <= 64 else sequence_id[:64] + "..."
    return RpcFailure(grpc.StatusCode.NOT_FOUND, f"sequence {shown!r} not found")


Handler = TypeVar("Handler", bound=Callable[..., Any])


def _what_failed(error: BaseException) -> str:
    """The error and those it was raised while handling, earliest first ("A; then B"). A
    rollback that fails in turn must not hide what went wrong: after a full disk SQLite has
    already rolled back, and a killed PostgreSQL connection cannot roll back."""
    messages: list[str] = []
    cause: BaseException | None = error
    while cause is not None and len(messages) < 5:
        text = " ".join(str(cause).split())
        if text and text not in messages:
            messages.append(text)
        cause = cause.__context__
    return "; then ".join(reversed(messages))


def _answers_errors(handler: Handler) -> Handler:
    """Turn every failure into a deliberate gRPC status: a caller never sees a stack trace or
    grpcio's 'Exception calling application' text, and a store outage reads as UNAVAILABLE."""

    @functools.wraps(handler)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return handler(self, request, context)
        except RpcFailure as failure:
            context.abort_with_status(failure.status)
        except (pw.OperationalError, pw.InterfaceError) as error:
            log.warning("%s: store unavailable: %s", handler.__name__, _what_failed(error))
            metrics.STORE_ERRORS.labels(type(error).__name__).inc()
            unavailable = RpcFailure(
                grpc.StatusCode.UNAVAILABLE, "the store is unavailable; retry later"
            )
            context.abort_with_status(unavailable.status)
        except Exception:
            log.exception("%s failed", handler.__name__)
            context.abort_with_status(RpcFailure(grpc.StatusCode.INTERNAL, "internal error").status)

    return wrapper  # type: ignore[return-value]


def _deadline(context: grpc.ServicerContext) -> float:
    """When the caller stops waiting (time.monotonic): its grpc-timeout, or for HTTP callers
    the gateway's route timeout, which Envoy sends as x-envoy-expected-rq-timeout-ms."""
    remaining = context.time_remaining()
    for key, value in context.invocation_metadata():
        if key == "x-envoy-expected-rq-timeout-ms" and str(value).isdigit():
            remaining = min(remaining, int(str(value)) / 1000)
    return time.monotonic() + remaining


def _still_wanted(context: grpc.ServicerContext, deadline: float) -> None:
    """Called last inside a create's transaction: a caller that has gone, or whose deadline
    has passed, is told so and nothing is committed (the transaction rolls back)."""
    if not context.is_active():
        raise RpcFailure(grpc.StatusCode.CANCELLED, "the call was cancelled; nothing was stored")
    if time.monotonic() >= deadline:
        raise RpcFailure(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "the deadline passed before the create could commit; nothing was stored",
        )


_METHODS = pb.DESCRIPTOR.services_by_name["SequenceService"].methods_by_name
CREATE = "/comms.v1.SequenceService/CreateSequence"


class SequenceService(pb_grpc.SequenceServiceServicer):
    def __init__(self, database: pw.Database) -> None:
        self._db = database
        self._page_secret: bytes | None = None
        self._transact = writer.transactions(database)

    @_answers_errors
    def CreateSequence(
        self, request: pb.CreateSequenceRequest, context: grpc.ServicerContext
    ) -> pb.Sequence:
        deadline = _deadline(context)
        auth.require_brand(request.brand_id)
        key, key_violations = idempotency.read_key(request, context)
        violations = validation.violations(request) + key_violations
        if violations:
            raise invalid_argument(violations)
        sequence, steps = convert.rows_from_request(request, convert.utc_now())
        # Built outside the transaction: on SQLite every transaction runs in the one writer.
        message = convert.sequence_message(sequence, steps)
        created = idempotency.Answer(message, httpapi.success_metadata(CREATE, message))

        def store_it() -> idempotency.Answer[pb.Sequence]:
            store.insert_sequence(self._db, sequence, steps)
            return created

        answer, replayed = idempotency.run(
            self._db,
            self._transact,
            idempotency.key_for(key, _METHODS["CreateSequence"].full_name, request),
            pb.Sequence,
            store_it,
            last=lambda: _still_wanted(context, deadline),
        )
        return idempotency.respond(context, answer, replayed)

    @_answers_errors
    def GetSequence(
        self, request: pb.GetSequenceRequest, context: grpc.ServicerContext
    ) -> pb.Sequence:
        try:
            sequence_id = uuid.UUID(request.id)
        except ValueError:
            raise not_found(request.id) from None
        with self._db.connection_context():
            found = store.get_sequence(self._db, sequence_id)
        # Another brand's sequence is "not found" to a brand-limited caller: no hint it exists.
        if found is None or not auth.current_principal().may_act_for(found[0]["brand_id"]):
            raise not_found(request.id)
        return convert.sequence_message(*found)

    @_answers_errors
    def ListSequences(
        self, request: pb.ListSequencesRequest, context: grpc.ServicerContext
    ) -> pb.ListSequencesResponse:
        auth.require_brand(request.brand_id)
        violations = validation.violations(request)
        if violations:
            raise invalid_argument(violations)
        size = validation.page_size(request)
        with self._db.connection_context():
            secret = self._secret()
            after = None
            if request.page_token:
                try:
                    after = paging.decode(secret, request.brand_id, request.page_token)
                except paging.PageTokenError as error:
                    raise invalid_argument([FieldViolation("page_token", str(error))]) from None
            page = store.list_sequences(self._db, request.brand_id, after, size + 1)
        response = pb.ListSequencesResponse(
            sequences=[convert.sequence_message(*found) for found in page[:size]]
        )
        if len(page) > size:
            last = page[size - 1][0]
            response.next_page_token = paging.encode(
                secret, request.brand_id, paging.Cursor(last["created_at"], last["id"])
            )
        return response

    def _secret(self) -> bytes:
        if self._page_secret is None:
            self._page_secret = store.page_token_secret(self._db)
        return self._page_secret
