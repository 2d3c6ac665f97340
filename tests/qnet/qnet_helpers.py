"""Data builders shared by the QNet tests."""

from __future__ import annotations

import socket

from qlass.qnet.base import ValueQuery
from qlass.types import History, LabelledStep, Turn

GOOD, BAD, MEH = "move north", "move south", "look around"


def make_history(task: int, turns: int) -> History:
    return History(
        instruction=f"Your task is to find the coin in house {task}.",
        initial_observation="You are in the kitchen. There is a door to the north.",
        turns=tuple(
            Turn(
                text=f"Thought: step {i} of the search.\nAction: look around",
                action="look around",
                observation=f"You are in room {i}. You see a stove and a fridge, nothing else.",
            )
            for i in range(turns)
        ),
    )


def synthetic_steps(tasks: int = 12) -> list[LabelledStep]:
    """A small labelled tree per task: going north is right (Q=1), south wrong (Q=0)."""
    steps = []
    for task in range(tasks):
        for depth in range(2):
            history = make_history(task, depth)
            for action, q in ((GOOD, 1.0), (BAD, 0.0), (MEH, 0.5)):
                steps.append(
                    LabelledStep(
                        tree_id=task,
                        task_key=f"textworld_express/coin/train/{task}",
                        history=history,
                        candidate_text=f"Thought: I will try this.\nAction: {action}",
                        q=q,
                    )
                )
    return steps


def varied_queries(count: int = 24) -> list[ValueQuery]:
    """Queries with histories of 0..7 turns, so lengths differ a lot within a batch."""
    return [
        ValueQuery(
            make_history(i, i % 8),
            f"Thought: option {i}.\nAction: move {'north' if i % 2 else 'east'}",
        )
        for i in range(count)
    ]


def free_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
