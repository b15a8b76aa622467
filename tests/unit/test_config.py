"""Settings from the environment and the command line: defaults, flags, help and errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from comms import cli, gateway
from comms.config import SETTINGS, ConfigError, Settings, load


def test_the_gateway_forwards_to_the_listed_upstreams_else_the_local_server() -> None:
    listed = load({"COMMS_UPSTREAMS": "10.0.0.2:50051, comms-2.internal:6000,[::1]:7000"})
    assert listed.gateway_upstreams == (
        ("10.0.0.2", 50051),
        ("comms-2.internal", 6000),
        ("::1", 7000),
    )
    assert load({"COMMS_GRPC_PORT": "6000"}).gateway_upstreams == (("127.0.0.1", 6000),)


def _comms_cluster(settings: Any) -> Any:
    """The rendered cluster of the gRPC servers (beside it: the admin interface's)."""
    clusters = yaml.safe_load(gateway.render(settings))["static_resources"]["clusters"]
    (cluster,) = [c for c in clusters if c["name"] == "comms_grpc"]
    return cluster


def test_each_upstream_is_an_endpoint_of_the_cluster() -> None:
    settings = load({"COMMS_UPSTREAMS": "127.0.0.2:6001,comms.internal:6002"})
    cluster = _comms_cluster(settings)
    (locality,) = cluster["load_assignment"]["endpoints"]
    assert [e["endpoint"]["address"]["socket_address"] for e in locality["lb_endpoints"]] == [
        {"address": "127.0.0.2", "port_value": 6001},
        {"address": "comms.internal", "port_value": 6002},
    ]
    assert cluster["type"] == "STRICT_DNS"  # a name among them
    assert cluster["health_checks"][0]["grpc_health_check"] == {
        "service_name": "comms.v1.SequenceService"
    }
    assert cluster["outlier_detection"]["consecutive_gateway_failure"] == 3
    addresses = load({"COMMS_UPSTREAMS": "127.0.0.2:6001,[::1]:6002"})
    cluster = _comms_cluster(addresses)
    assert cluster["type"] == "STATIC"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "COMMS_UPSTREAMS",
            "127.0.0.2:6001,127.0.0.3",
            "COMMS_UPSTREAMS must be host:port items separated by commas, got '127.0.0.3'",
        ),
        (
            "COMMS_UPSTREAMS",
            "127.0.0.2:0",
            "COMMS_UPSTREAMS must be host:port items separated by commas, got '127.0.0.2:0'",
        ),
        ("COMMS_GRPC_PORT", "http", "COMMS_GRPC_PORT must be a whole number, got 'http'"),
        (
            "COMMS_HTTP_PORT",
            "70000",
            "COMMS_HTTP_PORT must be a port number from 0 to 65535, got 70000",
        ),
        ("COMMS_ENV", "staging", "COMMS_ENV must be production or development, got 'staging'"),
        ("COMMS_GATEWAY_WORKERS", "0", "COMMS_GATEWAY_WORKERS must be at least 1, got 0"),
    ],
)
def test_bad_settings_are_named(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load({name: value})
    assert str(caught.value) == message


@pytest.mark.parametrize(("env", "workers"), [({}, "1"), ({"COMMS_GATEWAY_WORKERS": "3"}, "3")])
def test_envoy_runs_the_gateway_workers_setting(
    env: dict[str, str], workers: str, tmp_path: Path
) -> None:
    command = cli._envoy(load(env | {"COMMS_DATA_DIR": str(tmp_path)}))
    at = command.index("--concurrency")
    assert command[at + 1] == workers
    assert command.count("--concurrency") == 1


# --- the command line: each setting's flag, its help, and its errors ------------------------


def test_a_flag_wins_over_its_environment_variable() -> None:
    env = {"COMMS_HTTP_PORT": "9000", "COMMS_GRPC_PORT": "6000", "COMMS_DATA_DIR": "/env"}
    settings = load(env, {"http_port": "9100", "data_dir": "/flag"})
    assert (settings.http_port, settings.grpc_port, settings.data_dir) == (
        9100,
        6000,
        Path("/flag"),
    )


def test_flags_reach_the_settings_through_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Settings] = []
    monkeypatch.setitem(cli.COMMANDS, "serve", (lambda settings, _: seen.append(settings) or 0, ""))
    monkeypatch.setenv("COMMS_GRPC_PORT", "6000")
    monkeypatch.setenv("COMMS_BIND_HOST", "0.0.0.0")
    monkeypatch.setenv("COMMS_DATA_DIR", "/nowhere/env")
    argv = [
        "serve",
        "--grpc-port",
        "7000",
        "--bind-host",
        "127.0.0.1",
        "--data-dir",
        "/nowhere/flag",
    ]
    monkeypatch.setattr(cli.datadir, "make_private", lambda _: None)
    assert cli.main(argv) == 0
    assert (seen[0].grpc_port, seen[0].bind_host, seen[0].data_dir) == (
        7000,
        "127.0.0.1",
        Path("/nowhere/flag"),
    )


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_help_shows_each_flag_with_its_environment_variable_and_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    up = _help("up", capsys)
    for line in [
        "--http-port PORT public HTTP port: Envoy's listener, HTTP/JSON and gRPC (env COMMS_HTTP_PORT, default 8080)",
        "--grpc-port PORT the gRPC server's port (the gateway forwards to it) (env COMMS_GRPC_PORT, default 50051)",
        "--admin-port PORT Envoy's admin port, on 127.0.0.1 only (env COMMS_ADMIN_PORT, default 9901)",
        "--bind-host ADDRESS address the gRPC server and Envoy's public listener bind (env COMMS_BIND_HOST, default 127.0.0.1 when COMMS_ENV=development, else 0.0.0.0)",
        "--data-dir DIR directory of the SQLite file, the Envoy config and the development keys (env COMMS_DATA_DIR, default ./data)",
        "--database-url URL sqlite:///path or postgresql://user@host:5432/db (env COMMS_DATABASE_URL, default sqlite:///<data dir>/comms.db)",
    ]:
        assert line in up
    serve, gateway = _help("serve", capsys), _help("gateway", capsys)
    assert "--grpc-port" in serve and "--bind-host" in serve
    assert "--http-port" not in serve and "--upstreams" not in serve
    assert "--http-port" in gateway and "--bind-host" in gateway
    assert (
        "--upstreams LIST the gRPC servers Envoy balances over, host:port[,host:port...] (names or IP addresses) (env COMMS_UPSTREAMS, default 127.0.0.1:<grpc port>)"
        in gateway
    )
    assert "--database-url" not in gateway and "--upstreams" not in up


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (
            ["up", "--http-port", "70000"],
            {},
            "--http-port must be a port number from 0 to 65535, got 70000",
        ),
        (["serve", "--grpc-port", "http"], {}, "--grpc-port must be a whole number, got 'http'"),
        (
            ["gateway", "--upstreams", "comms-1:50051,"],
            {},
            "--upstreams must be host:port items separated by commas, got ''",
        ),
        (
            ["gateway", "--bind-host", "localhost"],
            {},
            "--bind-host must be an IP address such as 127.0.0.1 or 0.0.0.0, got 'localhost'",
        ),
        (
            ["serve"],
            {"COMMS_BIND_HOST": "example.com"},
            "COMMS_BIND_HOST must be an IP address such as 127.0.0.1 or 0.0.0.0, got 'example.com'",
        ),
        (
            ["serve"],
            {"COMMS_MAX_CONNECTIONS": "0"},
            "COMMS_MAX_CONNECTIONS must be at least 1, got 0",
        ),
        # the flag is named when it is the one given, even beside a bad variable
        (
            ["up", "--admin-port", "-1"],
            {"COMMS_ADMIN_PORT": "x"},
            "--admin-port must be a port number from 0 to 65535, got -1",
        ),
    ],
)
def test_a_bad_value_exits_2_naming_the_flag_or_variable(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert (exited.value.code, capsys.readouterr()) == (2, ("", f"comms: {message}\n"))


# --- where the service listens --------------------------------------------------------------


def test_development_binds_loopback_and_production_every_interface() -> None:
    assert load({"COMMS_ENV": "development"}).bind_host == "127.0.0.1"
    assert load({}).bind_host == "0.0.0.0"
    assert load({"COMMS_ENV": "production"}).bind_host == "0.0.0.0"
    assert load({"COMMS_ENV": "development", "COMMS_BIND_HOST": "0.0.0.0"}).bind_host == "0.0.0.0"
    assert load({"COMMS_ENV": "development"}, {"bind_host": "10.1.2.3"}).bind_host == "10.1.2.3"


@pytest.mark.parametrize(
    ("env", "address"),
    [
        ({"COMMS_ENV": "development"}, "127.0.0.1"),
        ({}, "0.0.0.0"),
        ({"COMMS_BIND_HOST": "::"}, "::"),
    ],
)
def test_envoy_public_listener_binds_the_setting(env: dict[str, str], address: str) -> None:
    rendered = yaml.safe_load(gateway.render(load(env | {"COMMS_HTTP_PORT": "8123"})))
    (public,) = [
        each for each in rendered["static_resources"]["listeners"] if each["name"] == "public"
    ]
    assert public["address"] == {"socket_address": {"address": address, "port_value": 8123}}
    assert rendered["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_the_readme_shows_every_setting_and_every_flag_as_help_does() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## Configuration") :].split("\n## ")[0]
    shown = {" ".join(line.split()) for line in section.splitlines()}
    for spec in SETTINGS.values():
        assert f"| `{spec.env}` |" in section, spec.env
        if "up" in spec.commands:
            line = f"{spec.flag} {spec.metavar} {spec.help} (env {spec.env}, default {spec.default_text})"
            assert line in shown, line


def test_a_data_dir_that_cannot_be_made_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exited:
        cli.main(["migrate", "--data-dir", str(tmp_path / "file" / "data")])
    message = f"comms: cannot create the data directory {tmp_path}/file/data: Not a directory\n"
    assert (exited.value.code, capsys.readouterr()) == (2, ("", message))
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]
