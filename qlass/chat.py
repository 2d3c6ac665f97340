"""Turn a :class:`~qlass.types.History` into chat messages, for the policy and for the QNet.

One rendering is shared by behaviour cloning, exploration, search and QNet training, so the
model sees at inference exactly the format it was trained on:

    system     the environment family's instruction prompt (with its in-context example)
    user       the task instruction and the first observation
    assistant  "Thought: ... Action: ..."
    user       "Observation: ..."
    ...

Long episodes are cut to the most recent ``max_turns`` turns (the instruction is always
kept), which is what a small-context model needs.
"""

from __future__ import annotations

from qlass.types import ChatMessage, History

__all__ = ["OBSERVATION_PREFIX", "policy_messages", "value_messages"]

OBSERVATION_PREFIX = "Observation: "


def _task_message(history: History) -> ChatMessage:
    return {
        "role": "user",
        "content": f"{history.instruction}\n{OBSERVATION_PREFIX}{history.initial_observation}",
    }


def _turn_messages(history: History, max_turns: int | None) -> list[ChatMessage]:
    turns = history.turns if max_turns is None else history.turns[-max_turns:] if max_turns else ()
    messages: list[ChatMessage] = []
    for turn in turns:
        messages.append({"role": "assistant", "content": turn.text})
        messages.append({"role": "user", "content": OBSERVATION_PREFIX + turn.observation})
    return messages


def policy_messages(
    history: History, system_prompt: str | None = None, *, max_turns: int | None = None
) -> list[ChatMessage]:
    """Messages that ask the policy for the next turn after ``history``."""
    messages: list[ChatMessage] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append(_task_message(history))
    messages.extend(_turn_messages(history, max_turns))
    return messages


def value_messages(
    history: History, candidate_text: str, *, max_turns: int | None = None
) -> list[ChatMessage]:
    """Messages the QNet scores: task, history and the candidate turn, no system prompt."""
    messages = [_task_message(history), *_turn_messages(history, max_turns)]
    messages.append({"role": "assistant", "content": candidate_text})
    return messages
