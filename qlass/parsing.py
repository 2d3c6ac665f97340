"""Parse ReAct-style model output (``Thought: ... Action: ...``) into an action.

The format is the one the expert trajectories use and the BC stage trains on. Output with
no ``Action:`` line, or an empty action, raises :class:`~qlass.errors.ActionParseError`;
callers record such a step as invalid and never send an empty string to a simulator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qlass.errors import ActionParseError
from qlass.types import Candidate, Usage

__all__ = [
    "INVALID_OBSERVATION",
    "ParsedOutput",
    "candidate_from_text",
    "format_turn",
    "parse_output",
]

INVALID_OBSERVATION = (
    "Invalid format: nothing was done. Reply with 'Thought: <reasoning>' and "
    "'Action: <one action>'."
)
"""What the policy sees after a turn with no parsable action (nothing reached the env)."""

_ACTION = re.compile(r"^[ \t]*action[ \t]*:[ \t]*(?P<action>.*)$", re.IGNORECASE | re.MULTILINE)
_THOUGHT = re.compile(
    r"^[ \t]*thought[ \t]*:[ \t]*(?P<thought>.*?)(?=^[ \t]*action[ \t]*:|\Z)",
    re.IGNORECASE | re.MULTILINE | re.DOTALL,
)
MAX_ACTION_CHARS = 300


@dataclass(frozen=True, slots=True)
class ParsedOutput:
    thought: str | None
    action: str


def parse_output(text: str) -> ParsedOutput:
    """Return the thought and action of ``text``; the last ``Action:`` line wins.

    Raises:
        ActionParseError: no ``Action:`` line, an empty action, or an absurdly long one.
    """
    matches = list(_ACTION.finditer(text))
    if not matches:
        raise ActionParseError("model output has no 'Action:' line", text)
    action = " ".join(matches[-1].group("action").split())
    if not action:
        raise ActionParseError("model output has an empty 'Action:'", text)
    if len(action) > MAX_ACTION_CHARS:
        raise ActionParseError(
            f"action is {len(action)} characters long (limit {MAX_ACTION_CHARS})", text
        )
    thought_match = _THOUGHT.search(text)
    thought = " ".join(thought_match.group("thought").split()) if thought_match else None
    return ParsedOutput(thought=thought or None, action=action)


def candidate_from_text(text: str, usage: Usage = Usage(), *, cached: bool = False) -> Candidate:
    """Build a :class:`Candidate` from raw model text, recording a parse failure on it."""
    try:
        parsed = parse_output(text)
    except ActionParseError as exc:
        return Candidate(text=text, action=None, usage=usage, parse_error=str(exc), cached=cached)
    return Candidate(
        text=text, action=parsed.action, thought=parsed.thought, usage=usage, cached=cached
    )


def format_turn(action: str, thought: str | None = None) -> str:
    """Render an agent turn in the format :func:`parse_output` reads."""
    if thought:
        return f"Thought: {thought}\nAction: {action}"
    return f"Action: {action}"
