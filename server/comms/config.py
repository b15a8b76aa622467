"""Settings: read once at start-up, from the environment and the command line, and passed to
what needs them.

Each setting is described once, on its field below: default, environment variable, check,
help, and the flag that may set it instead. `load` and the `comms` command's options are both
made from these descriptions."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A setting has a value the service cannot use."""


@dataclass(frozen=True)
class Setting:
    env: str
    parse: Callable[[str], Any]  # raises ValueError("must be ..., got ...") on a bad value
    help: str
    default_text: str  # the default as --help and the errors show it
    flag: str = ""  # e.g. "--http-port"; "" when only the environment sets it
    commands: tuple[str, ...] = ()  # the commands that take the flag
    metavar: str = ""


def _setting(default: Any, env: str, parse: Callable[[str], Any], help: str, **more: Any) -> Any:
    """A Settings field and its description (kept in the field's metadata)."""
    default_text = more.pop("default_text", str(default))
    spec = Setting(env, parse, help, default_text, **more)
    return field(default=default, metadata={"setting": spec})


def _integer(low: int, high: int | None = None, rule: str = "") -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"must be a whole number, got {raw!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {rule or bounds}, got {value}")
        return value

    return parse


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"must be {' or '.join(allowed)}, got {raw!r}")
        return raw

    return parse


def _ip_address(raw: str) -> str:
    # Envoy's listener takes an address, not a name, so both are held to that.
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise ValueError(
            f"must be an IP address such as 127.0.0.1 or 0.0.0.0, got {raw!r}"
        ) from None


_port = _integer(0, 65535, "a port number from 0 to 65535")


def _endpoint(raw: str) -> tuple[str, int]:
    """One host:port of a list: a DNS name, an IPv4 address or a bracketed IPv6 one, and a
    port from 1 to 65535 (a server to reach has a port of its own, never 0)."""
    host, colon, port = raw.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not (colon and host and port.isdigit() and 1 <= int(port) <= 65535) or any(
        c in host for c in " /@[]"
    ):
        raise ValueError(f"must be host:port items separated by commas, got {raw.strip()!r}")
    return host, int(port)


_SERVERS = ("up", "serve")
_GATEWAYS = ("up", "gateway")
_STORES = ("up", "serve", "migrate")
LOOPBACK, EVERY_INTERFACE = "127.0.0.1", "0.0.0.0"


@dataclass(frozen=True)
class Settings:
    http_port: int = _setting(
        8080,
        "COMMS_HTTP_PORT",
        _port,
        "public HTTP port: Envoy's listener, HTTP/JSON and gRPC",
        flag="--http-port",
        commands=_GATEWAYS,
        metavar="PORT",
    )
    grpc_port: int = _setting(
        50051,
        "COMMS_GRPC_PORT",
        _port,
        "the gRPC server's port (the gateway forwards to it)",
        flag="--grpc-port",
        commands=(*_SERVERS, "gateway"),
        metavar="PORT",
    )
    admin_port: int = _setting(
        9901,
        "COMMS_ADMIN_PORT",
        _port,
        "Envoy's admin port, on 127.0.0.1 only",
        flag="--admin-port",
        commands=_GATEWAYS,
        metavar="PORT",
    )
    # Operator ports, on the same address as the public ones: Prometheus scrapes them from
    # another host in production; they hold no data, only counts and times.
    metrics_port: int = _setting(
        9464,
        "COMMS_METRICS_PORT",
        _port,
        "the server's Prometheus /metrics",
        flag="--metrics-port",
        commands=_SERVERS,
        metavar="PORT",
    )
    gateway_metrics_port: int = _setting(
        9465,
        "COMMS_GATEWAY_METRICS_PORT",
        _port,
        "Envoy's stats for Prometheus, /stats/prometheus",
        flag="--gateway-metrics-port",
        commands=_GATEWAYS,
        metavar="PORT",
    )
    # Unset: loopback in development, so `make run` is not reachable from the network.
    bind_host: str = _setting(
        EVERY_INTERFACE,
        "COMMS_BIND_HOST",
        _ip_address,
        "address the gRPC server and Envoy's public listener bind",
        default_text=f"{LOOPBACK} when COMMS_ENV=development, else {EVERY_INTERFACE}",
        flag="--bind-host",
        commands=("up", "serve", "gateway"),
        metavar="ADDRESS",
    )
    # The gateway's upstream cluster: the server instances, each one `comms serve` on an
    # address of its own, anywhere Envoy can reach. Unset: the one server on this machine.
    upstreams: tuple[tuple[str, int], ...] = _setting(
        (),
        "COMMS_UPSTREAMS",
        lambda raw: tuple(_endpoint(each) for each in raw.split(",")),
        "the gRPC servers Envoy balances over, host:port[,host:port...] (names or IP addresses)",
        default_text="127.0.0.1:<grpc port>",
        flag="--upstreams",
        commands=("gateway",),
        metavar="LIST",
    )
    data_dir: Path = _setting(  # noqa: RUF009 (a field(), made once)
        Path("data"),
        "COMMS_DATA_DIR",
        Path,
        "directory of the SQLite file, the Envoy config and the development keys",
        default_text="./data",
        flag="--data-dir",
        commands=(*_STORES, "gateway", "dev-token"),
        metavar="DIR",
    )
    database_url: str = _setting(
        "",
        "COMMS_DATABASE_URL",
        str,
        "sqlite:///path or postgresql://user@host:5432/db",
        default_text="sqlite:///<data dir>/comms.db",
        flag="--database-url",
        commands=_STORES,
        metavar="URL",
    )
    # On 2 cores 4 threads served more gets and creates a second than 16, at less CPU a
    # call: waking threads costs more than the overlap gains (make bench, issue 14).
    grpc_workers: int = _setting(
        4,
        "COMMS_GRPC_WORKERS",
        _integer(1),
        "threads serving calls in each process, and database connections in its pool",
    )
    # One by default: on 2 cores, Envoy's default of a worker per core took more CPU a
    # request and served fewer creates a second, the server wanting the other core.
    gateway_workers: int = _setting(
        1,
        "COMMS_GATEWAY_WORKERS",
        _integer(1),
        "Envoy's worker threads (its --concurrency)",
    )
    max_in_flight: int = _setting(
        0,
        "COMMS_MAX_IN_FLIGHT",
        _integer(0),
        "calls running or queued in a process; beyond it a call is refused at once",
        default_text="32 x workers",
    )
    # Each open connection holds a descriptor and memory: without a cap a flood of idle
    # connections exhausted the descriptors. Past it a new connection is closed at once.
    max_connections: int = _setting(
        1000,
        "COMMS_MAX_CONNECTIONS",
        _integer(1),
        "open gRPC connections a process accepts",
    )
    sqlite_busy_timeout_ms: int = _setting(
        5000,
        "COMMS_SQLITE_BUSY_TIMEOUT_MS",
        _integer(0),
        "how long a SQLite writer waits for another process's lock",
    )
    drain_seconds: float = _setting(
        10.0,
        "COMMS_DRAIN_SECONDS",
        lambda raw: float(_integer(0)(raw)),
        "how long SIGTERM waits for in-flight calls",
        default_text="10",
    )
    log_level: str = _setting("INFO", "COMMS_LOG_LEVEL", str.upper, "Python log level")
    log_format: str = _setting(
        "auto",
        "COMMS_LOG_FORMAT",
        _choice("auto", "json", "plain"),
        "the server's log lines: json, plain, or auto (plain when stderr is a terminal)",
    )
    environment: str = _setting(
        "production",
        "COMMS_ENV",
        _choice("production", "development"),
        "development trusts a generated local key pair and binds loopback",
    )
    auth_jwks_path: Path | None = _setting(  # noqa: RUF009 (a field(), made once)
        None,
        "COMMS_AUTH_JWKS_PATH",
        Path,
        "JWKS file of the keys that sign tokens",
        default_text="none",
    )
    auth_issuer: str = _setting(
        "", "COMMS_AUTH_ISSUER", str, "the iss tokens must carry", default_text="none"
    )
    auth_audience: str = _setting(
        "", "COMMS_AUTH_AUDIENCE", str, "the aud tokens must carry", default_text="none"
    )
    auth_leeway_seconds: int = _setting(
        30, "COMMS_AUTH_LEEWAY_SECONDS", _integer(0, 300), "clock skew allowed on exp and nbf"
    )
    # How long Envoy waits on a slow or idle HTTP client (seconds): for all the request
    # headers, for the whole request, on a stream with no activity, and on a connection
    # with no request. Not read from the environment: tests make them short.
    gateway_headers_timeout: float = 10.0
    gateway_request_timeout: float = 60.0
    gateway_stream_idle_timeout: float = 30.0
    gateway_idle_timeout: float = 300.0

    @property
    def gateway_upstreams(self) -> tuple[tuple[str, int], ...]:
        """Where Envoy sends calls: the listed servers, else the local one on grpc_port."""
        return self.upstreams or ((LOOPBACK, self.grpc_port),)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'comms.db'}"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file, if the store is one."""
        url = self.resolved_database_url
        path = urlsplit(url).path[1:]  # sqlite:///rel.db -> rel.db, sqlite:////abs -> /abs
        if not url.startswith("sqlite") or path in ("", ":memory:"):
            return None
        return Path(path)


# Settings field name -> its description, in declaration order.
SETTINGS: dict[str, Setting] = {
    f.name: f.metadata["setting"] for f in fields(Settings) if "setting" in f.metadata
}


def address(host: str, port: int) -> str:
    """host:port as gRPC and logs write it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def load(env: Mapping[str, str] = os.environ, flags: Mapping[str, str] | None = None) -> Settings:
    """Settings from COMMS_* variables and from flags (by field name), which win over them.
    Unset or empty ones take their defaults; an unusable one is a ConfigError naming it."""
    values: dict[str, Any] = {}
    for name, spec in SETTINGS.items():
        given = (flags or {}).get(name)
        source, raw = (spec.flag, given) if given is not None else (spec.env, env.get(spec.env))
        raw = (raw or "").strip()
        if raw:
            try:
                values[name] = spec.parse(raw)
            except ValueError as error:
                raise ConfigError(f"{source} {error}") from None
    # The defaults that depend on other settings (shown in each one's default_text).
    if "bind_host" not in values and values.get("environment") == "development":
        values["bind_host"] = LOOPBACK
    return Settings(**values)
