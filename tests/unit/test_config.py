"""Settings from the environment: the process count each store gets by default."""

from __future__ import annotations

import os

import pytest

from comms.config import ConfigError, load


def test_sqlite_gets_one_process_and_postgresql_one_per_core() -> None:
    assert load({}).server_processes == 1
    assert load({"COMMS_DATABASE_URL": "sqlite:///x.db"}).server_processes == 1
    postgres = load({"COMMS_DATABASE_URL": "postgresql://root@127.0.0.1/test"})
    assert postgres.server_processes == (os.cpu_count() or 1)
    assert load({"COMMS_SERVER_PROCESSES": "3"}).server_processes == 3


def test_several_processes_give_the_gateway_one_port_each() -> None:
    settings = load({"COMMS_SERVER_PROCESSES": "3", "COMMS_GRPC_PORT": "6000"})
    assert settings.upstream_ports == [6001, 6002, 6003]
    assert load({"COMMS_GRPC_PORT": "6000"}).upstream_ports == [6000]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("COMMS_SERVER_PROCESSES", "65", "COMMS_SERVER_PROCESSES must be from 1 to 64, got 65"),
        ("COMMS_GRPC_PORT", "http", "COMMS_GRPC_PORT must be a whole number, got 'http'"),
        (
            "COMMS_HTTP_PORT",
            "70000",
            "COMMS_HTTP_PORT must be a port number from 0 to 65535, got 70000",
        ),
        ("COMMS_ENV", "staging", "COMMS_ENV must be production or development, got 'staging'"),
    ],
)
def test_bad_settings_are_named(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load({name: value})
    assert str(caught.value) == message
