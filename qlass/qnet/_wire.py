"""JSON forms of histories, value queries and labelled steps (HTTP bodies and JSONL files).

Plain stdlib, so that the scorer server, its client and ``qlass train-qnet --triples`` share
one format without importing pydantic. A history is::

    {"instruction": "...", "initial_observation": "...",
     "turns": [{"text": "Thought: ...\\nAction: ...", "action": "...", "observation": "..."}]}

and a labelled step (one line of a triples JSONL file) is::

    {"tree_id": 3, "task_key": "twx/coin/train/7", "history": {...},
     "candidate_text": "Thought: ...\\nAction: ...", "q": 0.81}
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from qlass.errors import MissingDataError, UserError
from qlass.qnet.base import ValueQuery
from qlass.types import History, LabelledStep, Turn

__all__ = [
    "history_from_json",
    "history_to_json",
    "labelled_step_from_json",
    "labelled_step_to_json",
    "query_from_json",
    "query_to_json",
    "read_triples_jsonl",
    "write_triples_jsonl",
]


def history_to_json(history: History) -> dict[str, Any]:
    """The JSON object of ``history``."""
    return {
        "instruction": history.instruction,
        "initial_observation": history.initial_observation,
        "turns": [
            {"text": t.text, "action": t.action, "observation": t.observation}
            for t in history.turns
        ],
    }


def _str(data: Mapping[str, Any], key: str, *, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string")
    return value


def history_from_json(data: Any) -> History:
    """Parse a history object; raises ``ValueError`` naming the bad field."""
    if not isinstance(data, Mapping):
        raise ValueError("history must be an object")
    turns_raw = data.get("turns", [])
    if not isinstance(turns_raw, list):
        raise ValueError("field 'turns' must be a list")
    turns = []
    for raw in turns_raw:
        if not isinstance(raw, Mapping):
            raise ValueError("each turn must be an object")
        turns.append(
            Turn(_str(raw, "text"), _str(raw, "action", optional=True), _str(raw, "observation"))
        )
    return History(_str(data, "instruction"), _str(data, "initial_observation"), tuple(turns))


def query_to_json(query: ValueQuery) -> dict[str, Any]:
    """The JSON object of one value query (an item of ``POST /v1/score``)."""
    return {"history": history_to_json(query.history), "candidate_text": query.candidate_text}


def query_from_json(data: Any) -> ValueQuery:
    """Parse one value query; raises ``ValueError`` naming the bad field."""
    if not isinstance(data, Mapping):
        raise ValueError("query must be an object")
    return ValueQuery(history_from_json(data.get("history")), _str(data, "candidate_text"))


def labelled_step_to_json(step: LabelledStep) -> dict[str, Any]:
    """The JSON object of one training triple."""
    return {
        "tree_id": step.tree_id,
        "task_key": step.task_key,
        "history": history_to_json(step.history),
        "candidate_text": step.candidate_text,
        "q": step.q,
    }


def labelled_step_from_json(data: Any) -> LabelledStep:
    """Parse one training triple; raises ``ValueError`` naming the bad field."""
    if not isinstance(data, Mapping):
        raise ValueError("a triple must be an object")
    tree_id, q = data.get("tree_id"), data.get("q")
    if not isinstance(tree_id, int) or isinstance(tree_id, bool):
        raise ValueError("field 'tree_id' must be an integer")
    if not isinstance(q, int | float) or isinstance(q, bool) or not math.isfinite(q):
        raise ValueError("field 'q' must be a finite number")
    return LabelledStep(
        tree_id=tree_id,
        task_key=_str(data, "task_key"),
        history=history_from_json(data.get("history")),
        candidate_text=_str(data, "candidate_text"),
        q=float(q),
    )


def read_triples_jsonl(path: Path) -> list[LabelledStep]:
    """Read a JSONL file of labelled steps (blank lines skipped).

    Raises:
        MissingDataError: the file does not exist or cannot be read.
        UserError: a line is not valid JSON or not a valid triple (the message names it).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MissingDataError(f"cannot read triples file {path}: {exc.strerror}") from exc
    steps = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            steps.append(labelled_step_from_json(json.loads(line)))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise UserError(f"{path}:{number}: not a valid triple: {exc}") from exc
    return steps


def write_triples_jsonl(steps: Iterable[LabelledStep], path: Path) -> int:
    """Write labelled steps as JSONL; returns how many were written."""
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for step in steps:
            handle.write(json.dumps(labelled_step_to_json(step), ensure_ascii=False) + "\n")
            count += 1
    return count
