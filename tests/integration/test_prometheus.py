"""A real Prometheus scrapes a running stack (two server instances behind Envoy) under a
short load; its HTTP API then shows the request rate and the error counts moving.

Needs Debian's `prometheus` (CI installs it, .ci/run); skipped elsewhere without it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench.stack import Stack, Store, free_port, running_stack, wait_until_ok
from tests.conftest import debian_binary

PROMETHEUS = debian_binary("prometheus", "prometheus")
CREATE = "comms.v1.SequenceService/CreateSequence"


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def value(self, query: str) -> float | None:
        """The query's single value now, None while it has none."""
        address = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        with urllib.request.urlopen(address, timeout=5) as answer:
            result = json.load(answer)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, query: str, expected: float, seconds: float = 30) -> float | None:
        """Poll until the query gives expected (scrapes come each second); the last value."""
        deadline, value = time.monotonic() + seconds, None
        while time.monotonic() < deadline:
            value = self.value(query)
            if value == expected:
                break
            time.sleep(0.25)
        return value


@contextlib.contextmanager
def scraping(stack: Stack, metrics_port: int, envoy_port: int, tmp: Path) -> Iterator[Prometheus]:
    """Prometheus scraping each server instance (its address, the one metrics port) and Envoy."""
    servers = [f"{host}:{metrics_port}" for host, _ in stack.servers]
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {"job_name": "comms", "static_configs": [{"targets": servers}]},
            {
                "job_name": "envoy",
                "metrics_path": "/stats/prometheus",
                "static_configs": [{"targets": [f"127.0.0.1:{envoy_port}"]}],
            },
        ],
    }
    (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    with open(tmp / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=log,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        details = (tmp / "prometheus.log").read_text
        wait_until_ok(process, f"{url}/-/ready", "prometheus", details=details)
        yield Prometheus(url)
    finally:
        process.terminate()
        process.wait(10)


def _post(stack: Stack, body: dict[str, object]) -> int:
    request = urllib.request.Request(
        stack.http_url,
        json.dumps(body).encode(),
        {"Authorization": f"Bearer {stack.token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


HOSTS = ("127.0.0.2", "127.0.0.3")  # two server instances, each on its own address


def test_prometheus_sees_the_request_rate_and_the_errors_move(tmp_path: Path) -> None:
    metrics_port, envoy_port = free_port(), free_port()
    settings = {
        "COMMS_METRICS_PORT": str(metrics_port),
        "COMMS_GATEWAY_METRICS_PORT": str(envoy_port),
        "COMMS_LOG_LEVEL": "WARNING",
    }
    store = Store("sqlite", f"sqlite:///{tmp_path / 'comms.db'}")
    with (
        running_stack(store, tmp_path, settings, hosts=HOSTS, instances=2) as stack,
        scraping(stack, metrics_port, envoy_port, tmp_path) as prometheus,
    ):
        created = f'sum(comms_rpc_requests_total{{method="{CREATE}",code="OK"}})'
        refused = f'sum(comms_rpc_requests_total{{method="{CREATE}",code="INVALID_ARGUMENT"}})'
        client_errors = (
            'sum(envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix="comms",'
            'envoy_response_code_class="4"})'
        )
        # Scraped before the load: both targets up; one create and one refusal, so that
        # the series exist (a rate needs two samples of a series).
        assert prometheus.wait_for('sum(up{job=~"comms|envoy"})', 3) == 3
        good = {"brand_id": "brand_p", "name": "Scraped", "steps": []}
        assert (_post(stack, good), _post(stack, good | {"name": ""})) == (201, 422)
        assert prometheus.wait_for(created, 1) == 1
        assert prometheus.wait_for(refused, 1) == 1
        assert prometheus.wait_for(client_errors, 1) == 1
        rate = f'sum(rate(comms_rpc_requests_total{{method="{CREATE}"}}[1m]))'
        assert prometheus.wait_for(rate, 0) == 0

        statuses = [_post(stack, good) for _ in range(40)]
        statuses += [_post(stack, good | {"name": ""}) for _ in range(10)]
        assert statuses == [201] * 40 + [422] * 10

        # Both instances' counts, summed by the query; Envoy's 4xx the same.
        assert prometheus.wait_for(created, 41) == 41
        assert prometheus.wait_for(refused, 11) == 11
        assert prometheus.wait_for(client_errors, 11) == 11
        moving = prometheus.value(rate)
        assert moving is not None and moving > 0
        assert prometheus.value("sum(comms_store_batch_size_count)") == 41
        assert prometheus.value(f'sum(comms_rpc_duration_seconds_count{{method="{CREATE}"}})') == 52
