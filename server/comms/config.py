"""Settings: read once from the environment at start-up and passed to what needs them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """A setting has a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    http_port: int = 8080
    grpc_port: int = 50051
    admin_port: int = 9901
    bind_host: str = "0.0.0.0"
    upstream_host: str = "127.0.0.1"
    data_dir: Path = Path("data")
    database_url: str = ""
    grpc_workers: int = 16
    # Server processes. With more than one, process i also listens on
    # 127.0.0.1:(grpc_port + 1 + i), which is where the gateway sends its calls.
    server_processes: int = 1
    worker_index: int = -1  # set by the parent for each of several processes
    max_in_flight: int = 0  # 0: eight per worker
    sqlite_busy_timeout_ms: int = 5000
    drain_seconds: float = 10.0
    log_level: str = "INFO"
    environment: str = "production"  # or "development": trusts a generated local key pair
    auth_jwks_path: Path | None = None
    auth_issuer: str = ""
    auth_audience: str = ""
    auth_leeway_seconds: int = 30
    # How long Envoy waits on a slow or idle HTTP client (seconds): for all the request
    # headers, for the whole request, on a stream with no activity, and on a connection
    # with no request. Not read from the environment: tests make them short.
    gateway_headers_timeout: float = 10.0
    gateway_request_timeout: float = 60.0
    gateway_stream_idle_timeout: float = 30.0
    gateway_idle_timeout: float = 300.0

    @property
    def upstream_ports(self) -> list[int]:
        """The ports the gateway balances over: each process's own, or the one port."""
        if self.server_processes == 1:
            return [self.grpc_port]
        return [self.grpc_port + 1 + i for i in range(self.server_processes)]

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'comms.db'}"


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if not 0 <= value <= 65535:
        raise ConfigError(f"{name} must be a port number from 0 to 65535, got {value}")
    return value


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None


def load(env: Mapping[str, str] = os.environ) -> Settings:
    """Settings from COMMS_* variables; unset or empty ones take their defaults."""
    workers = _int(env, "COMMS_GRPC_WORKERS", Settings.grpc_workers)
    if workers < 1:
        raise ConfigError(f"COMMS_GRPC_WORKERS must be at least 1, got {workers}")
    database_url = env.get("COMMS_DATABASE_URL", "").strip()
    # Unset: one per core on PostgreSQL. On SQLite one, since it has one writer: a second
    # process added throughput but its lock hand-offs took p99 from 25 to 126 ms (bench).
    on_sqlite = not database_url or database_url.startswith("sqlite")
    processes = _int(env, "COMMS_SERVER_PROCESSES", 0) or (1 if on_sqlite else os.cpu_count() or 1)
    if not 1 <= processes <= 64:
        raise ConfigError(f"COMMS_SERVER_PROCESSES must be from 1 to 64, got {processes}")
    max_in_flight = _int(env, "COMMS_MAX_IN_FLIGHT", Settings.max_in_flight)
    if max_in_flight < 0:
        raise ConfigError(f"COMMS_MAX_IN_FLIGHT must not be negative, got {max_in_flight}")
    busy = _int(env, "COMMS_SQLITE_BUSY_TIMEOUT_MS", Settings.sqlite_busy_timeout_ms)
    if busy < 0:
        raise ConfigError(f"COMMS_SQLITE_BUSY_TIMEOUT_MS must not be negative, got {busy}")
    drain = _int(env, "COMMS_DRAIN_SECONDS", int(Settings.drain_seconds))
    if drain < 0:
        raise ConfigError(f"COMMS_DRAIN_SECONDS must not be negative, got {drain}")
    environment = env.get("COMMS_ENV", "").strip() or Settings.environment
    if environment not in ("production", "development"):
        raise ConfigError(f"COMMS_ENV must be production or development, got {environment!r}")
    leeway = _int(env, "COMMS_AUTH_LEEWAY_SECONDS", Settings.auth_leeway_seconds)
    if not 0 <= leeway <= 300:
        raise ConfigError(f"COMMS_AUTH_LEEWAY_SECONDS must be from 0 to 300, got {leeway}")
    jwks = env.get("COMMS_AUTH_JWKS_PATH", "").strip()
    return Settings(
        http_port=_port(env, "COMMS_HTTP_PORT", Settings.http_port),
        grpc_port=_port(env, "COMMS_GRPC_PORT", Settings.grpc_port),
        admin_port=_port(env, "COMMS_ADMIN_PORT", Settings.admin_port),
        bind_host=env.get("COMMS_BIND_HOST", "").strip() or Settings.bind_host,
        upstream_host=env.get("COMMS_UPSTREAM_HOST", "").strip() or Settings.upstream_host,
        data_dir=Path(env.get("COMMS_DATA_DIR", "").strip() or Settings.data_dir),
        database_url=database_url,
        grpc_workers=workers,
        server_processes=processes,
        worker_index=_int(env, "COMMS_WORKER_INDEX", -1),
        max_in_flight=max_in_flight,
        sqlite_busy_timeout_ms=busy,
        drain_seconds=float(drain),
        log_level=env.get("COMMS_LOG_LEVEL", "").strip().upper() or Settings.log_level,
        environment=environment,
        auth_jwks_path=Path(jwks) if jwks else None,
        auth_issuer=env.get("COMMS_AUTH_ISSUER", "").strip(),
        auth_audience=env.get("COMMS_AUTH_AUDIENCE", "").strip(),
        auth_leeway_seconds=leeway,
    )
