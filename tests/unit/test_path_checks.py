"""What comms.lua checks is read from the OpenAPI document, so from the proto's rules: a rule
changed there changes the gateway's words, and comms.lua states none of them itself."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from comms import gateway
from comms.v1 import sequences_pb2 as pb

# comms.lua's code, its comments left out.
LUA = re.sub(
    r"--[^\n]*", "", (Path(__file__).resolve().parents[2] / "gateway/comms.lua").read_text()
)


def _checks(document: dict[str, Any], method: str) -> dict[str, Any]:
    request = getattr(pb, method + "Request").DESCRIPTOR
    return gateway.operation_checks(document, method, request)


@pytest.fixture
def document() -> dict[str, Any]:
    return json.loads(gateway.openapi_path().read_text())


def test_the_required_list_and_each_fields_rule(document: dict[str, Any]) -> None:
    checks = _checks(document, "CreateSequence")
    assert checks["list"] == "steps"
    fields = checks["fields"]
    channels = [v.name for v in pb.Channel.DESCRIPTOR.values if v.number != 0]
    assert fields["steps[].channel"] == {
        "name": "channel",
        "rule": "must be one of " + ", ".join(channels),
    }
    assert (
        fields["steps[].delayMinutes"]
        == fields["steps[].delay_minutes"]
        == {
            "name": "delay_minutes",
            "rule": "must be an integer from 0 to 2147483647",
        }
    )
    assert fields["steps[]"] == {"name": "steps", "rule": "must be an object"}
    assert fields["brandId"] == {"name": "brand_id", "rule": "must be a string"}
    assert _checks(document, "ListSequences")["fields"]["page_size"] == {
        "name": "page_size",
        "rule": "must be an integer from 0 to 2147483647",
    }
    assert "steps" not in fields  # the list itself is checked by shape, not by type


def test_a_rule_changed_in_the_document_changes_the_words(document: dict[str, Any]) -> None:
    changed = copy.deepcopy(document)
    changed["components"]["schemas"]["StepInput"]["properties"]["delay_minutes"].update(
        minimum=5, maximum=10080
    )
    fields = _checks(changed, "CreateSequence")["fields"]
    assert fields["steps[].delay_minutes"]["rule"] == "must be an integer from 5 to 10080"
    assert fields["steps[].position"]["rule"] == "must be an integer from 0 to 2147483647"


def test_no_required_list_no_list_check(document: dict[str, Any]) -> None:
    changed = copy.deepcopy(document)
    changed["components"]["schemas"]["CreateSequenceRequest"]["required"].remove("steps")
    assert "list" not in _checks(changed, "CreateSequence")
    assert _checks(document, "GetSequence") == {}


def test_the_lua_states_no_rule_of_its_own() -> None:
    for words in ("2147483647", "email", "in_app", '"steps"', "TYPE_INT32", "must be a string"):
        assert words not in LUA
    assert "must be one of" not in LUA
