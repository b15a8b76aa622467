"""OpenTelemetry traces of the gRPC server: off unless the standard OTEL_* variables ask.

OTEL_TRACES_EXPORTER=otlp (OTLP over HTTP/protobuf, to OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, default http://localhost:4318) or =console turns them
on; the SDK reads the rest (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER,
OTEL_PROPAGATORS: W3C traceparent by default). Unset, no tracing code runs on a call."""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from comms.config import ConfigError

EXPORTER_ENV = "OTEL_TRACES_EXPORTER"
# The SDK's names for its span exporters; "otlp" is the HTTP one here (the one installed).
_EXPORTERS = {"otlp": "otlp_proto_http"}


def provider_from_env(env: Mapping[str, str] = os.environ) -> Any | None:
    """A TracerProvider exporting as env says, or None when tracing is off (the SDK reads
    the other OTEL_* variables from os.environ itself)."""
    names = [n.strip() for n in env.get(EXPORTER_ENV, "none").split(",") if n.strip()]
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or names in ([], ["none"]):
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # from OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "comms"}))  # neither names one
    provider = TracerProvider(resource=resource)
    available = entry_points(group="opentelemetry_traces_exporter")
    for name in names:
        found = available.select(name=_EXPORTERS.get(name, name))
        if not found:
            raise ConfigError(f"{EXPORTER_ENV} must be otlp, console or none, got {name!r}")
        provider.add_span_processor(BatchSpanProcessor(next(iter(found)).load()()))
    return provider


def server_interceptor(provider: Any) -> Any:
    """The gRPC server interceptor that makes a span per call, a child of the caller's
    traceparent (gRPC metadata; Envoy passes an HTTP caller's header on as such)."""
    from opentelemetry.instrumentation.grpc import server_interceptor

    return server_interceptor(tracer_provider=provider)
