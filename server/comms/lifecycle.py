"""The states of a sequence and the moves between them: one table, read by the servicer.

Editing and deleting are moves too, that keep the state: the table says where each is allowed.
A soft-deleted sequence allows only undelete, whatever its state (see refusal)."""

from __future__ import annotations

from enum import Enum


class Move(Enum):
    ACTIVATE = "activate"
    PAUSE = "pause"
    RESUME = "resume"
    ARCHIVE = "archive"
    EDIT = "edit"
    DELETE = "delete"
    UNDELETE = "undelete"


# (state, move) -> the state after it; a pair not listed is refused.
TABLE: dict[tuple[str, Move], str] = {
    ("draft", Move.ACTIVATE): "active",
    ("draft", Move.ARCHIVE): "archived",
    ("draft", Move.EDIT): "draft",
    ("draft", Move.DELETE): "draft",
    ("active", Move.PAUSE): "paused",
    ("active", Move.ARCHIVE): "archived",
    ("paused", Move.RESUME): "active",
    ("paused", Move.ARCHIVE): "archived",
    ("paused", Move.EDIT): "paused",
    ("archived", Move.DELETE): "archived",
}
STATES = ("draft", "active", "paused", "archived")
# Moves that put a sequence live: they need a step, and record a revision after a change.
GOING_LIVE = frozenset({Move.ACTIVATE, Move.RESUME})


def allowed(state: str, deleted: bool) -> list[Move]:
    """The moves a sequence in this state allows, in the order Move lists them."""
    if deleted:
        return [Move.UNDELETE]
    return [move for move in Move if (state, move) in TABLE]


def refusal(state: str, deleted: bool, move: Move) -> str | None:
    """Why the move is refused (for a person: the current status and what is allowed), or
    None when it is allowed."""
    if move in allowed(state, deleted):
        return None
    now = f"deleted (status {state})" if deleted else state
    moves = ", ".join(m.value for m in allowed(state, deleted)) or "nothing"
    return f"cannot {move.value} a sequence that is {now}; it allows: {moves}"


def after(state: str, deleted: bool, move: Move) -> tuple[str, bool]:
    """(status, deleted) after an allowed move."""
    if move is Move.UNDELETE:
        return state, False
    return TABLE[(state, move)], move is Move.DELETE
