"""What the server's interceptors share: each wraps a unary method's handler, built once per
method, since intercept_service runs for every call on grpc's polling thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc


class UnaryWrapper(grpc.ServerInterceptor):
    """An interceptor that serves each unary method it wraps (wraps()) through wrap()'s
    handler, made on the method's first call and kept."""

    def __init__(self) -> None:
        self._wrapped: dict[str, Any] = {}

    def wraps(self, method: str) -> bool:
        return True

    def wrap(self, handler: Any, method: str) -> Any:
        raise NotImplementedError

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None or not self.wraps(details.method):
            return handler
        wrapped = self._wrapped.get(details.method)
        if wrapped is None:
            wrapped = self._wrapped[details.method] = self.wrap(handler, details.method)
        return wrapped


def unary_handler(
    handler: Any, serve: Callable[[Any, grpc.ServicerContext], Any], deserialize: Any = None
) -> Any:
    """handler's method served by serve (and its request read by deserialize, if given)."""
    return grpc.unary_unary_rpc_method_handler(
        serve,
        request_deserializer=deserialize or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
