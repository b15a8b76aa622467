"""The SequenceService servicer: validate -> one transaction -> convert."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import peewee as pw
from google.rpc import error_details_pb2

from comms import (
    auth,
    convert,
    editing,
    httpapi,
    idempotency,
    lifecycle,
    metrics,
    paging,
    store,
    validation,
    writer,
)
from comms.errors import RpcFailure
from comms.v1 import sequences_pb2 as pb
from comms.v1 import sequences_pb2_grpc as pb_grpc
from comms.validation import FieldViolation

log = logging.getLogger(__name__)

# Violations listed in one error: the message and details travel as gRPC trailers, which
# clients cap at 8 KiB by default.
MAX_REPORTED_VIOLATIONS = 20
# How long a deleted sequence can be undeleted; then it is purged, and 404 even before.
DELETED_RETENTION = dt.timedelta(days=30)
IF_MATCH_HEADER = "if-match"
ERROR_DOMAIN = "comms.v1.SequenceService"  # google.rpc.ErrorInfo.domain
# Tries of a change that lost its compare-and-set to a concurrent writer (without an etag
# from the caller, it is checked again against what that writer stored).
CHANGE_TRIES = 5


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


def _shown(text: str) -> str:
    return text if len(text) <= 64 else text[:64] + "..."


def not_found(sequence_id: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.NOT_FOUND, f"sequence {_shown(sequence_id)!r} not found")


def etag_mismatch(sent: str) -> RpcFailure:
    info = error_details_pb2.ErrorInfo(reason="ETAG_MISMATCH", domain=ERROR_DOMAIN)
    return RpcFailure(
        grpc.StatusCode.ABORTED,
        f"etag {_shown(sent)!r} is not the sequence's current etag: it changed since; "
        "read it again",
        details=[info],
    )


def failed_precondition(sequence_id: uuid.UUID, why: str) -> RpcFailure:
    failure = error_details_pb2.PreconditionFailure(
        violations=[
            error_details_pb2.PreconditionFailure.Violation(
                type="STATE", subject=f"sequences/{sequence_id}", description=why
            )
        ]
    )
    return RpcFailure(grpc.StatusCode.FAILED_PRECONDITION, why, details=[failure])


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


def answers_errors(handler: Handler) -> Handler:
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


def _etag(sent: str, context: grpc.ServicerContext) -> tuple[str, list[FieldViolation]]:
    """The etag the caller last saw, from the request or If-Match (if-match metadata): quoted
    as ETag sends it, bare, or * (any); "" when neither is sent."""
    headers = [str(v) for k, v in context.invocation_metadata() if k == IF_MATCH_HEADER]
    if len(headers) > 1:
        return "", [FieldViolation("If-Match", "must be sent at most once")]
    header = headers[0].strip() if headers else ""
    if len(header) >= 2 and header[0] == header[-1] == '"':
        header = header[1:-1]
    if header and sent and header != sent:
        return "", [FieldViolation("etag", "must equal the If-Match header when both are sent")]
    return sent or header, []


def _sequence_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise not_found(text) from None


_SERVICE = pb.DESCRIPTOR.services_by_name["SequenceService"]
# Each request type's RPC: its full name (what an idempotency key records) and its gRPC path
# (httpapi's key for the method's HTTP answer).
_RPCS = {
    m.input_type.name: (m.full_name, f"/{_SERVICE.full_name}/{m.name}") for m in _SERVICE.methods
}


class SequenceService(pb_grpc.SequenceServiceServicer):
    def __init__(self, database: pw.Database) -> None:
        self._db = database
        self._page_secret: bytes | None = None
        self._transact = writer.transactions(database)

    @answers_errors
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
        method, grpc_path = _RPCS[type(request).__name__]
        message = convert.sequence_message(sequence, steps)
        created = idempotency.Answer(message, httpapi.success_metadata(grpc_path, message))

        def store_it() -> idempotency.Answer[pb.Sequence]:
            store.insert_sequence(self._db, sequence, steps)
            return created

        answer, replayed = idempotency.run(
            self._db,
            self._transact,
            idempotency.key_for(key, method, request),
            pb.Sequence,
            store_it,
            last=lambda: _still_wanted(context, deadline),
        )
        return idempotency.respond(context, answer, replayed)

    @answers_errors
    def GetSequence(
        self, request: pb.GetSequenceRequest, context: grpc.ServicerContext
    ) -> pb.Sequence:
        sequence_id = _sequence_id(request.id)
        with self._db.connection_context():
            found = self._found(sequence_id, request.id)
        # The gateway passes it on as the ETag header, which If-Match takes back.
        context.send_initial_metadata((("etag", f'"{found[0]["etag"]}"'),))
        return convert.sequence_message(*found)

    @answers_errors
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
            page = store.list_sequences(
                self._db,
                request.brand_id,
                after,
                size + 1,
                [pb.Status.Name(status) for status in request.status],
                convert.utc_now() - DELETED_RETENTION if request.show_deleted else None,
            )
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

    # -- The life of a sequence: each change is one transaction, compare-and-set on the etag.

    def _found(
        self, sequence_id: uuid.UUID, shown: str, caller: auth.Principal | None = None
    ) -> store.Found:
        """The sequence the caller (by default, the current one) may see, or NOT_FOUND: one
        of another brand is "not found" (no hint it exists), as is one past its purge time."""
        caller = caller or auth.current_principal()
        found = store.get_sequence(self._db, sequence_id)
        if found is None or not caller.may_act_for(found[0]["brand_id"]):
            raise not_found(shown)
        deleted_at = found[0]["deleted_at"]
        if deleted_at is not None and deleted_at <= convert.utc_now() - DELETED_RETENTION:
            raise not_found(shown)
        return found

    def _change(
        self,
        request: Any,
        context: grpc.ServicerContext,
        target: tuple[str, str],
        move: lifecycle.Move,
        violations: list[FieldViolation],
        edit: Callable[[store.Found], editing.Changes] | None = None,
    ) -> pb.Sequence:
        """Check in the contract's order (the sequence, the request's rules, the etag, the
        state), then store the move, and edit's changes, in one transaction (with the answer,
        when the call has an idempotency key). target is the (id, etag) the request names."""
        sequence_id_text, sent_etag = target
        method, grpc_path = _RPCS[type(request).__name__]
        etag, etag_violations = _etag(sent_etag, context)
        key, key_violations = idempotency.read_key(request, context)
        violations = violations + etag_violations + key_violations
        sequence_id = _sequence_id(sequence_id_text)
        # Work may run in the writer's thread, which does not see the caller's context.
        caller = auth.current_principal()

        def work() -> idempotency.Answer[pb.Sequence]:
            found = self._found(sequence_id, sequence_id_text, caller)
            row, steps = found
            if violations:
                raise invalid_argument(violations)
            if etag not in ("", "*", row["etag"]):
                raise etag_mismatch(etag)
            deleted = row["deleted_at"] is not None
            why = lifecycle.refusal(row["status"], deleted, move)
            if why is not None:
                raise failed_precondition(sequence_id, why)
            if move in lifecycle.GOING_LIVE and not steps:
                rule = f"must have at least 1 step to {move.value} the sequence"
                raise invalid_argument([FieldViolation("steps", rule)])
            # updated_at strictly increases, even if the clock steps back.
            now = max(convert.utc_now(), row["updated_at"] + dt.timedelta(microseconds=1))
            changes, new_steps = edit(found) if edit is not None else ({}, None)
            status, now_deleted = lifecycle.after(row["status"], deleted, move)
            if status != row["status"]:
                changes["status"] = status
            if now_deleted != deleted:
                changes["deleted_at"] = now if now_deleted else None
            if changes or new_steps is not None:  # an edit to the same values changes nothing
                changes |= {"etag": convert.new_etag(), "updated_at": now}
                if edit is not None:
                    changes["changed"] = True
                elif move in lifecycle.GOING_LIVE and row["changed"]:
                    changes |= {"revision": row["revision"] + 1, "changed": False}
                if not store.update_sequence_if(self._db, sequence_id, row["etag"], changes):
                    raise _Lost()
                if new_steps is not None:
                    store.replace_steps(self._db, sequence_id, new_steps)
                if "revision" in changes:
                    revision = convert.revision_row(
                        row, steps, changes["revision"], now, caller.subject
                    )
                    store.insert_revision(self._db, revision)
                found = store.get_sequence(self._db, sequence_id) or found
            message = convert.sequence_message(*found)
            return idempotency.Answer(message, httpapi.success_metadata(grpc_path, message))

        for _ in range(CHANGE_TRIES):
            try:
                answer, replayed = idempotency.run(
                    self._db,
                    self._transact,
                    idempotency.key_for(key, method, request),
                    pb.Sequence,
                    work,
                )
                return idempotency.respond(context, answer, replayed)
            except _Lost:
                if etag not in ("", "*"):
                    raise etag_mismatch(etag) from None
        raise RpcFailure(
            grpc.StatusCode.UNAVAILABLE, "the sequence is changing too fast to change it; retry"
        )

    def _move(
        self, request: Any, context: grpc.ServicerContext, move: lifecycle.Move
    ) -> pb.Sequence:
        violations = validation.violations(request)
        return self._change(request, context, (request.id, request.etag), move, violations)

    @answers_errors
    def UpdateSequence(
        self, request: pb.UpdateSequenceRequest, context: grpc.ServicerContext
    ) -> pb.Sequence:
        paths, violations = editing.paths(request)
        violations += editing.violations(request, paths)
        # The sequence's rules are the create rules above; the request's own are the rest.
        violations += validation.violations(pb.UpdateSequenceRequest(request_id=request.request_id))
        return self._change(
            request,
            context,
            (request.sequence.id, request.sequence.etag),
            lifecycle.Move.EDIT,
            violations,
            lambda found: editing.changes(request, paths, found),
        )

    @answers_errors
    def ActivateSequence(
        self, request: pb.ActivateSequenceRequest, context: grpc.ServicerContext
    ) -> pb.Sequence:
        return self._move(request, context, lifecycle.Move.ACTIVATE)

    @answers_errors
    def PauseSequence(
        self, request: pb.PauseSequenceRequest, context: grpc.ServicerContext
    ) -> pb.Sequence:
        return self._move(request, context, lifecycle.Move.PAUSE)

    @answers_errors
    def ResumeSequence(
        self, request: pb.ResumeSequenceRequest, context: grpc.ServicerContext
    ) -> pb.Sequence:
        return self._move(request, context, lifecycle.Move.RESUME)

    @answers_errors
    def ArchiveSequence(
        self, request: pb.ArchiveSequenceRequest, context: grpc.ServicerContext
    ) -> pb.Sequence:
        return self._move(request, context, lifecycle.Move.ARCHIVE)

    @answers_errors
    def DeleteSequence(
        self, request: pb.DeleteSequenceRequest, context: grpc.ServicerContext
    ) -> pb.Sequence:
        return self._move(request, context, lifecycle.Move.DELETE)

    @answers_errors
    def UndeleteSequence(
        self, request: pb.UndeleteSequenceRequest, context: grpc.ServicerContext
    ) -> pb.Sequence:
        return self._move(request, context, lifecycle.Move.UNDELETE)

    # -- Revisions: what went live, readable as long as the sequence is.

    @answers_errors
    def ListSequenceRevisions(
        self, request: pb.ListSequenceRevisionsRequest, context: grpc.ServicerContext
    ) -> pb.ListSequenceRevisionsResponse:
        sequence_id = _sequence_id(request.sequence_id)
        size = validation.page_size(request)
        with self._db.connection_context():
            self._found(sequence_id, request.sequence_id)
            violations = validation.violations(request)
            if violations:
                raise invalid_argument(violations)
            secret = self._secret()
            before = None
            if request.page_token:
                try:
                    before = paging.decode_revision(secret, sequence_id, request.page_token)
                except paging.PageTokenError as error:
                    raise invalid_argument([FieldViolation("page_token", str(error))]) from None
            page = store.list_revisions(self._db, sequence_id, before, size + 1)
        response = pb.ListSequenceRevisionsResponse(
            revisions=[convert.revision_message(row) for row in page[:size]]
        )
        if len(page) > size:
            last = page[size - 1]["revision"]
            response.next_page_token = paging.encode_revision(secret, sequence_id, last)
        return response

    @answers_errors
    def GetSequenceRevision(
        self, request: pb.GetSequenceRevisionRequest, context: grpc.ServicerContext
    ) -> pb.SequenceRevision:
        sequence_id = _sequence_id(request.sequence_id)
        with self._db.connection_context():
            self._found(sequence_id, request.sequence_id)
            violations = validation.violations(request)
            if violations:
                raise invalid_argument(violations)
            row = store.get_revision(self._db, sequence_id, request.revision)
        if row is None:
            raise RpcFailure(
                grpc.StatusCode.NOT_FOUND,
                f"revision {request.revision} of sequence {_shown(request.sequence_id)!r} "
                "not found",
            )
        return convert.revision_message(row)


class _Lost(Exception):
    """A concurrent writer changed the sequence between this change's read and its write."""
