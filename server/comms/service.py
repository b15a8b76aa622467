"""The SequenceService servicer: validate -> one transaction -> convert."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import peewee as pw
from google.rpc import error_details_pb2

from comms import auth, convert, models
from comms.errors import RpcFailure
from comms.v1 import sequences_pb2 as pb
from comms.v1 import sequences_pb2_grpc as pb_grpc
from comms.validation import FieldViolation, create_sequence_violations

log = logging.getLogger(__name__)

# Violations listed in one error: the message and details travel as gRPC trailers, which
# clients cap at 8 KiB by default.
MAX_REPORTED_VIOLATIONS = 20
# Sent as initial metadata; the gateway turns the transcoder's 200 into this status.
HTTP_CODE_HEADER = "x-http-code"


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


Handler = TypeVar("Handler", bound=Callable[..., Any])


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
            log.warning("%s: store unavailable: %s", handler.__name__, error)
            unavailable = RpcFailure(
                grpc.StatusCode.UNAVAILABLE, "the store is unavailable; retry later"
            )
            context.abort_with_status(unavailable.status)
        except Exception:
            log.exception("%s failed", handler.__name__)
            context.abort_with_status(RpcFailure(grpc.StatusCode.INTERNAL, "internal error").status)

    return wrapper  # type: ignore[return-value]


class SequenceService(pb_grpc.SequenceServiceServicer):
    def __init__(self, database: pw.Database) -> None:
        self._db = database

    @_answers_errors
    def CreateSequence(
        self, request: pb.CreateSequenceRequest, context: grpc.ServicerContext
    ) -> pb.Sequence:
        auth.require_brand(request.brand_id)
        violations = create_sequence_violations(request)
        if violations:
            raise invalid_argument(violations)
        sequence, steps = convert.rows_from_request(request, convert.utc_now())
        with self._db.connection_context(), self._db.atomic():
            models.SequenceRow.insert(sequence).execute()
            if steps:
                models.StepRow.insert_many(steps).execute()
        context.send_initial_metadata(((HTTP_CODE_HEADER, "201"),))
        return convert.sequence_message(sequence, steps)
