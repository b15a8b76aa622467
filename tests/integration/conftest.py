"""A real stack per store: the gRPC server on a free port and a real Envoy in front of it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import peewee as pw
import pytest

from bench.stack import free_port, wait_until_ok
from comms import db, gateway, store
from comms.auth import TokenVerifier
from comms.config import Settings
from comms.server import Server, create_server
from tests.conftest import STORES, fresh_database_url
from tests.tokens import Keys


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", self.headers
        return json.loads(self.body)


@dataclass
class Envoy:
    settings: Settings
    process: subprocess.Popen[bytes]
    # Sent with every request unless the request names the header itself (None drops it).
    default_headers: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def start(cls, settings: Settings, access_log: Path | None = None) -> Envoy:
        """Envoy for settings; its access log (stdout) to the file access_log if given."""
        config = gateway.write_config(settings, settings.data_dir)
        with open(access_log or os.devnull, "ab") as stdout:
            process = subprocess.Popen(
                gateway.envoy_command(config),
                stdout=stdout if access_log else None,
                stderr=subprocess.PIPE,
            )
        envoy = cls(settings, process)
        envoy.wait_ready()
        return envoy

    def wait_ready(self) -> None:
        stderr = self.process.stderr
        wait_until_ok(
            self.process,
            f"http://127.0.0.1:{self.settings.admin_port}/ready",
            "envoy",
            details=lambda: stderr.read().decode() if stderr else "",
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        if self.process.stderr:
            self.process.stderr.close()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str | None] | None = None,
    ) -> Response:
        connection = http.client.HTTPConnection("127.0.0.1", self.settings.http_port, timeout=10)
        merged = self.default_headers | (headers or {})
        sent = {k: v for k, v in merged.items() if v is not None}
        try:
            data = body.encode() if isinstance(body, str) else body
            connection.request(method, path, body=data, headers=sent)
            answer = connection.getresponse()
            return Response(
                answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
            )
        finally:
            connection.close()

    def post(
        self,
        payload: Any,
        path: str = "/v1/sequences",
        headers: dict[str, str | None] | None = None,
    ) -> Response:
        sent: dict[str, str | None] = {"Content-Type": "application/json"} | (headers or {})
        return self.request("POST", path, json.dumps(payload), sent)


@dataclass
class Stack:
    """The server and Envoy on one database; everything a test needs to reach them."""

    database: pw.Database
    server: Server
    envoy: Envoy
    keys: Keys
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def envoy_target(self) -> str:
        return f"127.0.0.1:{self.envoy.settings.http_port}"

    def channel(self, target: str, token: str | None = "") -> grpc.Channel:
        """A channel whose calls carry token ("": a good one with every scope; None: none)."""
        channel = grpc.insecure_channel(target)
        self.channels.append(channel)
        if token is None:
            return channel
        return grpc.intercept_channel(channel, _Bearer(token or self.keys.token()))

    def counts(self) -> tuple[int, int]:
        """Rows stored: (sequences, steps)."""
        with self.database.connection_context():
            return store.counts(self.database)

    def stored(self, sequence_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        with self.database.connection_context():
            found = store.get_sequence(self.database, uuid.UUID(sequence_id))
        assert found is not None, sequence_id
        return found


class _ClientCallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _Bearer(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds authorization: Bearer <token> to every unary call."""

    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), self._metadata]
        return continuation(
            _ClientCallDetails(
                details.method,
                details.timeout,
                metadata,
                details.credentials,
                details.wait_for_ready,
                details.compression,
            ),
            request,
        )


def gateway_settings(tmp: Path, grpc_port: int) -> Settings:
    return Settings(
        http_port=free_port(),
        admin_port=free_port(),
        gateway_metrics_port=free_port(),
        grpc_port=grpc_port,
        data_dir=tmp,
    )


@contextlib.contextmanager
def running_stack(
    url: str, tmp_path_factory: pytest.TempPathFactory, keys: Keys, verifier: TokenVerifier
) -> Iterator[Stack]:
    """The server on the database at url, trusting verifier's keys, and Envoy in front."""
    database = db.prepare(url)
    server = create_server("127.0.0.1:0", database, verifier, workers=8)
    envoy = Envoy.start(gateway_settings(tmp_path_factory.mktemp("envoy"), server.port))
    envoy.default_headers["Authorization"] = f"Bearer {keys.token()}"
    stack = Stack(database, server, envoy, keys)
    try:
        yield stack
    finally:
        for channel in stack.channels:
            channel.close()
        envoy.stop()
        server.stop(1)
        database.close_all()


@pytest.fixture(scope="session", params=STORES)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, keys: Keys
) -> Iterator[Stack]:
    if request.param == "postgres":
        request.getfixturevalue("postgres_available")
    with (
        fresh_database_url(request.param, tmp_path_factory) as url,
        running_stack(url, tmp_path_factory, keys, keys.verifier()) as stack,
    ):
        yield stack
