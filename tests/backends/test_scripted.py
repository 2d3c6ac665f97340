"""The scripted policy other layers test with: n, seeds, usage, rules and scripted errors."""

from __future__ import annotations

import pytest

from qlass.backends.base import Policy
from qlass.backends.cache import sample_seed
from qlass.backends.scripted import ScriptedPolicy
from qlass.errors import PolicyTimeoutError
from qlass.types import ChatMessage

MESSAGES: list[ChatMessage] = [
    {"role": "system", "content": "play well"},
    {"role": "user", "content": "Observation: you are in a hall"},
]


async def test_actions_cycle_and_honour_n() -> None:
    policy = ScriptedPolicy(actions=["look", "move north"])
    assert isinstance(policy, Policy)
    first = await policy.sample(MESSAGES, n=3)
    assert [c.action for c in first] == ["look", "move north", "look"]
    assert [c.text for c in first][1] == "Action: move north"
    assert (await policy.sample(MESSAGES))[0].action == "move north"


async def test_usage_is_word_counts() -> None:
    policy = ScriptedPolicy(["Thought: go on\nAction: move north"])
    (candidate,) = await policy.sample(MESSAGES)
    assert candidate.usage.prompt_tokens == 2 + 6
    assert candidate.usage.completion_tokens == 6
    assert candidate.thought == "go on"


async def test_seeded_samples_follow_the_seeding_rule() -> None:
    texts = [f"Action: a{i}" for i in range(97)]
    policy = ScriptedPolicy(texts)
    many = await policy.sample(MESSAGES, n=5, seed=11)
    for i in range(5):
        assert (await policy.sample(MESSAGES, seed=sample_seed(11, i)))[0].text == many[i].text
    assert [c.text for c in await policy.sample(MESSAGES, n=5, seed=11)] == [c.text for c in many]


async def test_rule_sees_messages_and_index() -> None:
    def rule(messages: object, index: int) -> str:
        return f"Action: echo {len(messages)}-{index}"  # type: ignore[arg-type]

    policy = ScriptedPolicy(rule=rule)
    assert [c.action for c in await policy.sample(MESSAGES, n=2)] == ["echo 2-0", "echo 2-1"]


async def test_scripted_errors_come_first_and_calls_are_recorded() -> None:
    policy = ScriptedPolicy(actions=["look"], errors=[PolicyTimeoutError("slow")])
    with pytest.raises(PolicyTimeoutError):
        await policy.sample(MESSAGES, n=2, temperature=0.3, max_tokens=9, stop=["\n"], seed=1)
    assert (await policy.sample(MESSAGES))[0].action == "look"
    assert [(c.n, c.temperature, c.max_tokens, c.stop, c.seed) for c in policy.calls] == [
        (2, 0.3, 9, ("\n",), 1),
        (1, 0.7, 256, (), None),
    ]
    await policy.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await policy.sample(MESSAGES)


async def test_stop_strings_and_unparsable_texts() -> None:
    policy = ScriptedPolicy(["Action: look\nObservation: fake", "just words"])
    first, second = await policy.sample(MESSAGES, n=2, stop=["\nObservation:"])
    assert first.text == "Action: look" and first.action == "look"
    assert second.action is None and second.parse_error


def test_exactly_one_script_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ScriptedPolicy()
    with pytest.raises(ValueError, match="exactly one"):
        ScriptedPolicy(["a"], actions=["b"])
    with pytest.raises(ValueError, match="empty"):
        ScriptedPolicy([])
