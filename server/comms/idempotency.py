"""Idempotent retries for any mutating method: the first answer is stored and replayed.

A keyed mutation runs in one transaction that first looks up (caller, key). Found with the
same method and request: the stored answer (response bytes and success metadata) is
replayed, whatever happened to the resource since. Found with anything else: 422
idempotency_key_reused. Not found: the work runs and its answer is stored in the same
transaction, so a committed change always has its answer and a rolled-back one has none."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import peewee as pw
from google.protobuf.message import Message

from comms import auth, convert, store, validation
from comms.errors import ERROR_CODE_HEADER, RpcFailure
from comms.httpapi import REPLAYED
from comms.validation import FieldViolation

HEADER = "idempotency-key"
# How long a key is remembered (the contract promises at least 24 hours).
RETENTION = dt.timedelta(hours=48)

Response = TypeVar("Response", bound=Message)
Metadata = tuple[tuple[str, str], ...]
Transact = Callable[[Callable[[], Any]], Any]


@dataclass(frozen=True)
class Answer(Generic[Response]):
    """A success as the caller hears it: the response and the initial metadata that carries
    its HTTP status (and Location). Replays send exactly this again."""

    message: Response
    metadata: Metadata = ()


@dataclass(frozen=True)
class Key:
    caller: str  # a hash of the token's subject: keys are never shared across callers
    key: str
    method: str  # the RPC's full name: one key, one method
    request_hash: str


def read_key(request: Message, context: grpc.ServicerContext) -> tuple[str, list[FieldViolation]]:
    """The key from the Idempotency-Key header (idempotency-key metadata) or the request's
    request_id field, "" when there is none; and what is wrong with it."""
    headers = [str(v) for k, v in context.invocation_metadata() if k == HEADER]
    if len(headers) > 1:
        return "", [FieldViolation("Idempotency-Key", "must be sent at most once")]
    header = headers[0] if headers else ""
    field = str(getattr(request, "request_id", ""))
    if header and field and header != field:
        return "", [
            FieldViolation("request_id", "must equal the Idempotency-Key header when both are sent")
        ]
    if header:
        return header, validation.idempotency_key_violations("Idempotency-Key", header)
    # request_id's rules are checked with the rest of the request.
    return field, []


def key_for(key: str, method: str, request: Message) -> Key | None:
    """The stored identity of a keyed call to method (a full name), None without a key."""
    if not key:
        return None
    subject = auth.current_principal().subject
    return Key(_hash(subject.encode()), key, method, fingerprint(request))


def fingerprint(request: Message) -> str:
    """What makes two calls the same request: every field but the key itself, the path's
    ids included (the transcoder puts them in the request), serialized deterministically."""
    copy = type(request)()
    copy.CopyFrom(request)
    if "request_id" in request.DESCRIPTOR.fields_by_name:
        copy.ClearField("request_id")
    return _hash(copy.SerializeToString(deterministic=True))


def run(
    database: pw.Database,
    transact: Transact,
    key: Key | None,
    response_type: type[Response],
    work: Callable[[], Answer[Response]],
    last: Callable[[], None] = lambda: None,
) -> tuple[Answer[Response], bool]:
    """Run work() in one transaction, or replay the answer stored under key; returns the
    answer and whether it is a replay. last() runs just before the commit (to give up when
    the caller has gone); it raising, like work() raising, stores nothing."""
    if key is None:

        def unkeyed() -> Answer[Response]:
            answer = work()
            last()
            return answer

        return transact(unkeyed), False
    now = convert.utc_now()

    def keyed() -> Answer[Response] | convert.Row:
        prior = _live(database, key, now)
        if prior is not None:
            return prior
        answer = work()
        store.insert_idempotency(database, _row(key, answer, now))
        last()
        return answer

    try:
        outcome = transact(keyed)
    except (pw.IntegrityError, RpcFailure):
        # A concurrent call with this key may have committed first (our key insert then
        # conflicts, or our change lost to its change): answer as it did.
        with database.connection_context():
            found = store.find_idempotency(database, key.caller, key.key)
        if found is None or found["created_at"] < now - RETENTION:
            raise
        outcome = found
    if isinstance(outcome, Answer):
        return outcome, False
    return _replay(outcome, key, response_type), True


def respond(context: grpc.ServicerContext, answer: Answer[Response], replayed: bool) -> Response:
    """Send the answer's metadata (marked when replayed) and return its message."""
    context.send_initial_metadata(answer.metadata + ((REPLAYED,) if replayed else ()))
    return answer.message


def _live(database: pw.Database, key: Key, now: dt.datetime) -> convert.Row | None:
    """The row stored under key, unless it has expired (then it is forgotten at once, so
    that the key can be used again before the hourly purge)."""
    prior = store.find_idempotency(database, key.caller, key.key)
    if prior is not None and prior["created_at"] < now - RETENTION:
        store.delete_idempotency(database, key.caller, key.key)
        return None
    return prior


def _row(key: Key, answer: Answer[Any], now: dt.datetime) -> convert.Row:
    return {
        "caller": key.caller,
        "key": key.key,
        "method": key.method,
        "request_hash": key.request_hash,
        "response": answer.message.SerializeToString(),
        "response_metadata": _encode(answer.metadata),
        "created_at": now,
    }


def _replay(prior: convert.Row, key: Key, response_type: type[Response]) -> Answer[Response]:
    if (prior["method"], prior["request_hash"]) != (key.method, key.request_hash):
        raise RpcFailure(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the idempotency key {key.key!r} was already used with a different request",
            metadata=[(ERROR_CODE_HEADER, "idempotency_key_reused")],
        )
    message = response_type.FromString(bytes(prior["response"]))
    return Answer(message, _decode(prior["response_metadata"]))


def _encode(metadata: Sequence[tuple[str, str]]) -> str:
    return json.dumps([list(pair) for pair in metadata], separators=(",", ":"))


def _decode(text: str) -> Metadata:
    return tuple((str(name), str(value)) for name, value in json.loads(text))


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
