"""The failover drill's short form (`make ha` is the long one, bench/ha.py): etcd, two
Patroni nodes, two server instances on 127.0.0.2 and .3, Envoy; kill -9 the PostgreSQL
primary under a load of retrying creates, then one server instance, then bring both back.
Nothing acknowledged is lost, nothing is stored twice, and the standby holds it all.

Needs the Debian packages patroni and etcd-server: installed here when missing (as root),
and by CI (.ci/run); skipped, saying so, only where they cannot be installed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import ha, patroni


def test_failover_loses_nothing_acknowledged_and_stores_nothing_twice(tmp_path: Path) -> None:
    if reason := patroni.missing():
        pytest.skip(f"the failover drill {reason}")

    lines, intact = ha.drill(seconds=1, instances=2, clients=3, workdir=tmp_path)

    verdict = re.fullmatch(r"ha: acknowledged (\d+), stored (\d+), lost 0, duplicated 0", lines[-1])
    assert verdict, lines
    acknowledged = int(verdict.group(1))
    assert acknowledged > 0 and verdict.group(2) == str(acknowledged)
    assert f"holds {acknowledged} of the {acknowledged} stored" in lines[-2]
    faults = [line for line in lines if line.startswith("ha: kill -9")]
    assert len(faults) == 2, lines
    assert intact
