"""The `comms` command: serve, gateway, up, migrate."""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

from comms import (
    auth,
    config,
    datadir,
    db,
    devkeys,
    gateway,
    housekeeping,
    logs,
    metrics,
    migrations,
    tracing,
)
from comms.server import Server, create_server

log = logging.getLogger("comms")


def _start_server(settings: config.Settings) -> Server:
    _allow_descriptors(settings.max_connections)
    database = db.prepare(
        settings.resolved_database_url, settings.grpc_workers, settings.sqlite_busy_timeout_ms
    )
    verifier = auth.verifier_for(settings)
    log.info(
        "tokens: issuer %r, audience %r, keys from %s%s",
        verifier.issuer,
        verifier.audience,
        verifier.jwks_path,
        " (the development key pair)" if settings.auth_jwks_path is None else "",
    )
    housekeeping.Sweeper(database)
    address = config.address(settings.bind_host, settings.grpc_port)
    try:
        server = create_server(
            address,
            database,
            verifier,
            settings.grpc_workers,
            settings.max_in_flight,
            max_connections=settings.max_connections,
            tracer_provider=tracing.provider_from_env(),
        )
    except RuntimeError as error:
        raise SystemExit(f"comms: cannot listen on {address}: {error}") from None
    log.info(
        "gRPC server listening on %s%s (store: %s)",
        config.address(settings.bind_host, server.port),
        # grpc binds a wildcard address as one dual-stack socket, [::]
        " (every interface, IPv4 and IPv6)" if settings.bind_host in ("0.0.0.0", "::") else "",
        db.describe(settings.resolved_database_url),
    )
    _serve_metrics(settings)
    return server


def _allow_descriptors(connections: int) -> None:
    """Raise this process's open-file limit to its hard limit, so that the connection cap,
    not a soft limit of 1024, is what bounds the connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < connections + 64:
        log.warning(
            "open files are limited to %d: fewer than COMMS_MAX_CONNECTIONS (%d) can be served",
            soft,
            connections,
        )


def _serve_metrics(settings: config.Settings) -> None:
    """/metrics for every server process, from this one (the first, or their parent)."""
    try:
        served = metrics.serve(settings.bind_host, settings.metrics_port)
    except OSError as error:
        address = config.address(settings.bind_host, settings.metrics_port)
        raise SystemExit(f"comms: cannot serve metrics on {address}: {error}") from None
    log.info(
        "Prometheus metrics on http://%s/metrics",
        config.address(_reachable(settings.bind_host), served.server_port),
    )


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def cmd_serve(settings: config.Settings, _: argparse.Namespace) -> int:
    stop = _stop_event()
    server = _start_server(settings)
    stop.wait()
    log.info("draining in-flight calls (up to %.0fs)", settings.drain_seconds)
    server.stop(settings.drain_seconds)
    return 0


def _envoy(settings: config.Settings) -> list[str]:
    path = gateway.write_config(settings, settings.data_dir)
    return gateway.envoy_command(path, workers=settings.gateway_workers)


def cmd_gateway(settings: config.Settings, _: argparse.Namespace) -> int:
    command = _envoy(settings)
    log.info(
        "starting Envoy: HTTP gateway on %s, forwarding to %s",
        config.address(settings.bind_host, settings.http_port),
        ", ".join(config.address(*each) for each in settings.gateway_upstreams),
    )
    os.execv(command[0], command)  # Envoy takes over this process and its signals


def _die_with_parent() -> Callable[[], None]:
    """In the child before exec: SIGTERM it when its parent dies (Linux prctl). Looked up
    here, before fork, the child only makes the call: no loader locks after fork."""
    prctl = getattr(ctypes.CDLL(None), "prctl", None)

    def in_child() -> None:
        if prctl is not None:
            prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return in_child


def cmd_up(settings: config.Settings, _: argparse.Namespace) -> int:
    """The server and Envoy together in the foreground; Ctrl-C or SIGTERM stops both."""
    stop = _stop_event()
    server = _start_server(settings)
    # Envoy in front of that server alone, wherever it bound.
    upstream = (_reachable(settings.bind_host), server.port)
    settings = dataclasses.replace(settings, upstreams=(upstream,))
    # Its own session: a Ctrl-C reaches us alone and we stop Envoy in order; and should
    # we die without cleaning up, the kernel ends Envoy too.
    envoy = subprocess.Popen(
        _envoy(settings), start_new_session=True, preexec_fn=_die_with_parent()
    )
    bound = gateway.bound_address(settings.admin_port, envoy)
    if bound:
        log.info(
            "HTTP gateway listening on http://%s (Envoy admin on 127.0.0.1:%d)",
            bound,
            settings.admin_port,
        )
        public = f"http://{_reachable_address(bound)}"
        log.info("API reference on %s/docs (the document: %s/openapi.json)", public, public)
        log.info("health: %s/healthz (alive), %s/readyz (ready), no token", public, public)
        stats = gateway.bound_address(settings.admin_port, envoy, listener="operator")
        log.info(
            "Envoy's Prometheus stats on http://%s/stats/prometheus", _reachable_address(stats)
        )
    else:
        log.error(
            "Envoy did not report its listener ready (Envoy admin on 127.0.0.1:%d)",
            settings.admin_port,
        )
    if settings.auth_jwks_path is None:
        token = devkeys.mint_token(settings.data_dir, _all_scopes(), ttl_seconds=12 * 3600)
        log.info("a development token (all scopes, 12 hours; `comms dev-token` makes more):")
        log.info("export TOKEN=%s", token)
        log.info(
            'try: curl -i %s/v1/sequences -H "Authorization: Bearer $TOKEN" '
            "-H 'Content-Type: application/json' "
            '-d \'{"brand_id":"brand_123","name":"Welcome","steps":[]}\'',
            config.address(_reachable(settings.bind_host), settings.http_port),
        )

    def watch_envoy() -> None:
        envoy.wait()
        stop.set()

    threading.Thread(target=watch_envoy, daemon=True).start()
    stop.wait()
    died = envoy.poll()
    if died is not None:
        log.error("Envoy exited with status %d; stopping the server", died)
    else:
        # Envoy first, so no new request reaches a draining server.
        envoy.terminate()
        envoy.wait()
    server.stop(settings.drain_seconds)
    log.info("stopped")
    return 1 if died is not None else 0


def _reachable_address(bound: str) -> str:
    """host:port as a local client reaches it."""
    host, _, port = bound.rpartition(":")
    return config.address(_reachable(host.strip("[]")), int(port))


def _reachable(host: str) -> str:
    """An address a local client can use for what listens on host."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def cmd_migrate(settings: config.Settings, _: argparse.Namespace) -> int:
    database = db.open_database(settings.resolved_database_url)
    with database.connection_context():
        applied = migrations.migrate(database)
    print(f"applied {len(applied)} migration(s): {applied}" if applied else "schema is up to date")
    return 0


def _all_scopes() -> list[str]:
    return sorted({scope for scope in auth.required_scopes().values() if scope})


def cmd_dev_token(settings: config.Settings, args: argparse.Namespace) -> int:
    """Print a token signed with the development key; the token is the last line."""
    if settings.auth_jwks_path is not None:
        raise config.ConfigError(
            "COMMS_AUTH_JWKS_PATH is set: the server trusts those keys, not the development key"
        )
    scopes = args.scope or _all_scopes()
    token = devkeys.mint_token(settings.data_dir, scopes, args.brand, args.ttl)
    limit = f"brands {', '.join(args.brand)}" if args.brand else "any brand"
    print(f"# scopes: {' '.join(scopes)}; {limit}; valid {args.ttl} s", file=sys.stderr)
    print(token)
    return 0


def _dev_token_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scope", action="append", metavar="S", help="a scope to grant (default: all declared)"
    )
    parser.add_argument(
        "--brand", action="append", metavar="B", help="limit the token to this brand_id"
    )
    parser.add_argument(
        "--ttl", type=int, default=3600, metavar="SECONDS", help="lifetime (default 3600)"
    )


COMMANDS = {
    "serve": (cmd_serve, "run the gRPC server"),
    "gateway": (cmd_gateway, "run Envoy, the HTTP/JSON gateway, in front of the gRPC server"),
    "up": (cmd_up, "run the gRPC server and the gateway together (what `make run` does)"),
    "migrate": (cmd_migrate, "create or update the database schema, then exit"),
    "dev-token": (cmd_dev_token, "print a token signed with the development key"),
}


def _setting_options(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of the settings this command uses, described by config.SETTINGS."""
    for name, spec in config.SETTINGS.items():
        if command in spec.commands:
            parser.add_argument(
                spec.flag,
                dest=name,
                metavar=spec.metavar,
                help=f"{spec.help} (env {spec.env}, default {spec.default_text})",
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="comms", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _setting_options(sub, name)
        if name == "dev-token":
            _dev_token_options(sub)
    args = parser.parse_args(argv)
    flags = {name: getattr(args, name) for name in config.SETTINGS if hasattr(args, name)}
    flags = {name: value for name, value in flags.items() if value is not None}
    try:
        settings = config.load(os.environ, flags)
    except config.ConfigError as error:
        parser.exit(2, f"comms: {error}\n")
    logs.configure(settings.log_level, settings.log_format)
    grpc_logger = logging.getLogger("grpc")
    grpc_logger.setLevel(max(logging.WARNING, grpc_logger.getEffectiveLevel()))
    handler, _ = COMMANDS[args.command]
    try:
        datadir.make_private(settings)
        return handler(settings, args)
    except config.ConfigError as error:
        parser.exit(2, f"comms: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
