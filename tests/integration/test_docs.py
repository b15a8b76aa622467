"""GET /docs in a real headless Chromium: Swagger UI, served by the gateway from the installed
package, renders the served document and lists every operation.

Needs Debian's `chromium` (CI installs it, .ci/run); skipped elsewhere without it. The page
needs no gRPC server: the gateway answers it and the document itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from comms import gateway
from tests.conftest import debian_binary
from tests.integration.conftest import Envoy, free_port, gateway_settings

CHROMIUM = debian_binary("chromium", "chromium")

# Root runs it without the sandbox; virtual time lets the page's scripts and its fetch of
# /openapi.json finish before the DOM is dumped (no wall-clock wait).
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000"]


@pytest.fixture(scope="module")
def envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envoy]:
    started = Envoy.start(gateway_settings(tmp_path_factory.mktemp("envoy"), free_port()))
    yield started
    started.stop()


def _chromium(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    # Its own profile and home, so that runs never share state.
    profile = f"--user-data-dir={home / 'profile'}"
    command = [str(CHROMIUM), *HEADLESS, profile, *args]
    env = os.environ | {"HOME": str(home)}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_the_page_lists_every_operation(envoy: Envoy, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{envoy.settings.http_port}/docs"
    dumped = _chromium("--dump-dom", url, home=tmp_path)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    document = json.loads(gateway.openapi_path().read_text())
    operations = sorted(
        (verb.upper(), path, operation["operationId"])
        for path, verbs in document["paths"].items()
        for verb, operation in verbs.items()
    )
    # Swagger UI's summary line of each operation: its method, path and operationId.
    shown = re.findall(
        r'opblock-summary-method">(\w+)<.*?data-path="([^"]+)".*?'
        r'opblock-summary-operation-id">(\w+)<',
        dumped.stdout,
        re.DOTALL,
    )
    assert sorted(shown) == operations
    assert len(operations) == 14
    assert "<title>comms API reference</title>" in dumped.stdout

    screenshot = tmp_path / "docs.png"
    shot = _chromium("--window-size=1280,2400", f"--screenshot={screenshot}", url, home=tmp_path)
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/docs", "text/html; charset=utf-8"),
        ("/docs/swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
        ("/docs/swagger-ui.css", "text/css; charset=utf-8"),
    ],
)
def test_the_page_and_its_files_come_from_the_gateway(
    envoy: Envoy, path: str, content_type: str
) -> None:
    answer = envoy.request("GET", path)
    assert (answer.status, answer.headers["content-type"]) == (200, content_type)
    assert answer.body == gateway.docs_file(gateway.DOCS[path][0]).read_bytes()
    refused = envoy.request("POST", path, "{}", {"Content-Type": "application/json"})
    assert (refused.status, refused.headers["allow"]) == (405, "GET, HEAD")
    assert refused.json() == {
        "error": "method_not_allowed",
        "message": f"method POST is not allowed on {path}; allowed: GET, HEAD",
    }


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """No CDN: every script and style the page names is one of the gateway's own paths."""
    page = (gateway.GATEWAY_DIR / "docs.html").read_text()
    loaded = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert loaded and all(link in gateway.DOCS for link in loaded), loaded
