"""RpcFailure: how a handler (or the auth check) answers with a gRPC status instead of a
response, with optional google.rpc details and trailing metadata."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2
from grpc_status import rpc_status

# Sent with an error whose gRPC status alone does not say which HTTP error code it is.
ERROR_CODE_HEADER = "x-error-code"


class _Status(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


class RpcFailure(Exception):
    """Raised to answer with this status; AnswersErrors and AuthInterceptor send it."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        details: Sequence[Message] = (),
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        status = status_pb2.Status(code=code.value[0], message=message)
        for detail in details:
            status.details.add().Pack(detail)
        encoded = rpc_status.to_status(status)  # adds grpc-status-details-bin
        self.code = code
        self.message = message
        self.status: grpc.Status = _Status(  # type: ignore[assignment]
            code, message, (*encoded.trailing_metadata, *metadata)
        )
