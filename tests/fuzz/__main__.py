"""`make fuzz`: a fresh stack (server and Envoy on free ports, SQLite in a temp dir) and
schemathesis against the /openapi.json it serves, with a token that has every scope.
Arguments go to `st run` (e.g. --seed 7 --max-examples 500). Exits with its status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from bench.stack import free_port, wait_until_ok

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BIN = Path(sys.executable).parent
READY_SECONDS = 30
RUN_SECONDS = 600  # a bound on the whole schemathesis run; it normally takes far less


def dev_token(env: dict[str, str]) -> str:
    """A token with every scope, signed with the development key under COMMS_DATA_DIR."""
    made = subprocess.run(
        [BIN / "comms", "dev-token"], env=env, capture_output=True, text=True, check=True
    )
    return made.stdout.split()[-1]


def seed_sequence(http_port: int, token: str) -> str:
    """A live sequence with revision 1 for the fuzzer to name in paths: ids it makes up name
    none, so every move, edit and revision would stop at 404."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def post(path: str, body: object) -> dict[str, str]:
        url = f"http://127.0.0.1:{http_port}{path}"
        request = urllib.request.Request(url, json.dumps(body).encode(), headers)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return dict(json.load(answer))

    made = post("/v1/sequences", {"brand_id": "fuzz", "name": "Fuzzed", "steps": [STEP]})
    post(f"/v1/sequences/{made['id']}:activate", {})
    return made["id"]


STEP = {"position": 0, "channel": "email", "template_key": "welcome", "delay_minutes": 0}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="comms-fuzz-") as tmp:
        http_port = free_port()
        env = os.environ | {
            "COMMS_HTTP_PORT": str(http_port),
            "COMMS_GRPC_PORT": str(free_port()),
            "COMMS_ADMIN_PORT": str(free_port()),
            "COMMS_METRICS_PORT": "0",
            "COMMS_GATEWAY_METRICS_PORT": "0",
            "COMMS_BIND_HOST": "127.0.0.1",
            "COMMS_DATA_DIR": tmp,
            "COMMS_DATABASE_URL": f"sqlite:///{tmp}/comms.db",
            "COMMS_LOG_LEVEL": "WARNING",
            "COMMS_ENV": "development",  # trust a key pair made in tmp
        }
        token = dev_token(env)
        log_path = Path(tmp) / "stack.log"
        with log_path.open("wb") as log:
            stack = subprocess.Popen(
                [BIN / "comms", "up"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        url = f"http://127.0.0.1:{http_port}/openapi.json"
        try:
            wait_until_ok(stack, url, "comms up", READY_SECONDS)
            env["COMMS_FUZZ_SEQUENCE_ID"] = seed_sequence(http_port, token)  # schemathesis.toml
            config = HERE / "schemathesis.toml"
            command = [BIN / "st", "--config-file", config, "run", url]
            command += ["--header", f"Authorization: Bearer {token}", *sys.argv[1:]]
            # In tmp: schemathesis and hypothesis leave their caches in the working directory.
            return subprocess.run(
                command,
                cwd=tmp,
                env=env | {"PYTHONPATH": str(ROOT)},
                timeout=RUN_SECONDS,
                check=False,
            ).returncode
        except Exception:
            sys.stderr.write(log_path.read_text(errors="replace")[-5000:])
            raise
        finally:
            stack.send_signal(signal.SIGTERM)
            stack.wait(30)


if __name__ == "__main__":
    sys.exit(main())
