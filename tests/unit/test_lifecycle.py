"""The state machine, every state x every move (deleted or not), against the contract's
list of states and moves written out again here by hand."""

from __future__ import annotations

import pytest

from comms import lifecycle
from comms.lifecycle import Move

# CONTRACT "States and moves": what each state allows and where it leads. Undelete is
# allowed only to a deleted sequence, which allows nothing else.
CONTRACT: dict[str, dict[Move, str]] = {
    "draft": {
        Move.ACTIVATE: "active",
        Move.ARCHIVE: "archived",
        Move.EDIT: "draft",
        Move.DELETE: "draft",
    },
    "active": {Move.PAUSE: "paused", Move.ARCHIVE: "archived"},
    "paused": {Move.RESUME: "active", Move.ARCHIVE: "archived", Move.EDIT: "paused"},
    "archived": {Move.DELETE: "archived"},
}
ALLOWED_WORDS = {
    "draft": "activate, archive, edit, delete",
    "active": "pause, archive",
    "paused": "resume, archive, edit",
    "archived": "delete",
}
CASES = [
    pytest.param(state, move, deleted, id=f"{'deleted ' if deleted else ''}{state}-{move.value}")
    for state in lifecycle.STATES
    for move in Move
    for deleted in (False, True)
]


def test_the_states_are_the_contracts() -> None:
    assert tuple(CONTRACT) == lifecycle.STATES


@pytest.mark.parametrize(("state", "move", "deleted"), CASES)
def test_every_state_and_move(state: str, move: Move, deleted: bool) -> None:
    refusal = lifecycle.refusal(state, deleted, move)
    if deleted:
        if move is Move.UNDELETE:
            assert refusal is None
            assert lifecycle.after(state, deleted, move) == (state, False)
        else:
            assert refusal == (
                f"cannot {move.value} a sequence that is deleted (status {state}); "
                "it allows: undelete"
            )
        return
    if move in CONTRACT[state]:
        assert refusal is None
        assert lifecycle.after(state, deleted, move) == (
            CONTRACT[state][move],
            move is Move.DELETE,
        )
    else:
        assert refusal == (
            f"cannot {move.value} a sequence that is {state}; it allows: {ALLOWED_WORDS[state]}"
        )


def test_only_activate_and_resume_go_live() -> None:
    assert {Move.ACTIVATE, Move.RESUME} == lifecycle.GOING_LIVE
