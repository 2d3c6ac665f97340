from collections.abc import Sequence

import pytest

from qlass.backends.scripted import ScriptedPolicy
from qlass.envs.pool import EnvPool
from qlass.errors import UnknownNameError
from qlass.runtime.context import SearchContext
from qlass.runtime.episode import INVALID_OBSERVATION
from qlass.runtime.strategies import (
    BeamSearch,
    BestOfN,
    Greedy,
    QGuided,
    RolloutOracle,
    make_strategy,
)
from qlass.types import ChatMessage

from .toys import TASK, Corridor, FunctionValueModel


def _alternate(messages: Sequence[ChatMessage], index: int) -> str:
    """Sample 0 goes left, sample 1 goes right: only a value model finds the way."""
    return "Action: move left" if index % 2 == 0 else "Thought: onward\nAction: move right"


def _ctx(env: Corridor, policy: ScriptedPolicy, value: FunctionValueModel | None = None, **kw):
    return SearchContext(policy=policy, envs=EnvPool.around(env), value_model=value, **kw)


def _prefers_right(text: str) -> float:
    return 1.0 if "right" in text else 0.0


async def test_greedy_follows_the_policy_and_counts_usage() -> None:
    env = Corridor(3)
    policy = ScriptedPolicy(actions=["move right"])
    ctx = _ctx(env, policy)
    trajectory = await Greedy().run(ctx, TASK, seed=0)
    assert [s.candidate.action for s in trajectory.steps] == ["move right"] * 3
    assert trajectory.final_score == 1.0
    assert trajectory.success
    assert all(call.temperature == 0.0 and call.n == 1 for call in policy.calls)
    assert trajectory.usage.completion_tokens == 3 * len(["Action:", "move", "right"])
    assert trajectory.env_steps == 3 == env.steps


async def test_qguided_executes_the_arg_max_of_the_value_model() -> None:
    env = Corridor(3)
    value = FunctionValueModel(_prefers_right)
    ctx = _ctx(env, ScriptedPolicy(rule=_alternate), value, max_steps=10)
    trajectory = await QGuided(candidates=2).run(ctx, TASK, seed=1)
    assert trajectory.success
    assert len(trajectory.steps) == 3
    # Both candidates of every step were scored, the chosen one has the best value.
    assert len(value.queries) == 6
    for step in trajectory.steps:
        assert [sc.value for sc in step.considered] == [0.0, 1.0]
        assert step.value == 1.0
    # Nothing but the chosen actions reached the environment.
    assert [a for _, a in env.log] == ["move right"] * 3


async def test_qguided_scores_finishing_candidates_with_the_value_model_not_the_env() -> None:
    env = Corridor(1)
    # The value model prefers 'left'; 'right' would finish the episode with reward 1.
    value = FunctionValueModel(lambda text: 0.9 if "left" in text else 0.0)
    ctx = _ctx(env, ScriptedPolicy(rule=_alternate), value, max_steps=2)
    trajectory = await QGuided(candidates=2).run(ctx, TASK, seed=0)
    assert [s.candidate.action for s in trajectory.steps] == ["move left", "move left"]
    assert not trajectory.success

    oracle_env = Corridor(1)
    oracle_ctx = _ctx(
        oracle_env, ScriptedPolicy(rule=_alternate), value, max_steps=2, oracle_terminal_reward=True
    )
    oracle = await QGuided(candidates=2).run(oracle_ctx, TASK, seed=0)
    assert oracle.success, "the labelled ablation reproduces the reference's env-reward leak"


async def test_invalid_output_is_a_recorded_step_and_never_reaches_the_env() -> None:
    env = Corridor(2)
    policy = ScriptedPolicy(texts=["I am not sure", "Action: move right"])
    ctx = _ctx(env, policy, max_steps=4)
    trajectory = await Greedy().run(ctx, TASK, seed=0)
    invalid = [s for s in trajectory.steps if s.candidate.action is None]
    assert invalid
    assert all(s.result.observation == INVALID_OBSERVATION for s in invalid)
    assert all(s.candidate.parse_error for s in invalid)
    assert all(action == "move right" for _, action in env.log)
    assert env.steps == len(trajectory.steps) - len(invalid)


async def test_truncation_at_max_steps() -> None:
    env = Corridor(5)
    ctx = _ctx(env, ScriptedPolicy(actions=["move left"]), max_steps=4)
    trajectory = await Greedy().run(ctx, TASK, seed=0)
    assert len(trajectory.steps) == 4
    assert not trajectory.success
    assert trajectory.final_score == 0.0


async def test_best_of_n_selects_by_value_not_by_true_reward() -> None:
    env = Corridor(2)
    # Episode i samples its turns by seed; the value model prefers episodes that end on 'left'.
    value = FunctionValueModel(lambda text: 1.0 if "left" in text else 0.5)
    policy = ScriptedPolicy(texts=["Action: move right", "Action: move left"])
    ctx = _ctx(env, policy, value, max_steps=3)
    trajectory = await BestOfN(n=4).run(ctx, TASK, seed=3)
    info = trajectory.info
    assert len(info["values"]) == 4
    assert info["chosen"] == max(range(4), key=lambda i: (info["values"][i], -i))
    assert info["oracle_best_score"] == max(info["scores"])
    ended_left = [v == 1.0 for v in info["values"]]
    assert (trajectory.steps[-1].candidate.action == "move left") == any(ended_left)
    # Tokens of all four rollouts are counted, not only the chosen one's.
    assert len(policy.calls) > len(trajectory.steps)
    assert trajectory.usage.completion_tokens == 3 * len(policy.calls)


async def test_beam_search_finds_the_goal_with_a_value_model() -> None:
    env = Corridor(2)
    value = FunctionValueModel(_prefers_right)
    ctx = _ctx(env, ScriptedPolicy(rule=_alternate), value, max_steps=6)
    trajectory = await BeamSearch(width=2, candidates=2).run(ctx, TASK, seed=0)
    assert trajectory.success
    assert [s.candidate.action for s in trajectory.steps] == ["move right", "move right"]


def test_make_strategy_parses_names_and_counts() -> None:
    assert make_strategy("qlass:4").name == "qlass:4"
    assert make_strategy("best_of_n:8").name == "best_of_n:8"
    assert make_strategy("greedy").name == "greedy"
    assert make_strategy("mcts:8").name == "mcts:8"
    with pytest.raises(UnknownNameError, match="unknown strategy"):
        make_strategy("alphazero")
    with pytest.raises(UnknownNameError, match="must be a number"):
        make_strategy("qlass:x")


async def test_qguided_resamples_to_choose_among_m_different_actions() -> None:
    """Sample 0 of the first call repeats 'left'; with resampling the second call brings
    'right', so the QNet chooses between two different actions (and the extra sample is
    paid for); without it there is nothing to choose."""
    calls: list[int] = []

    def rule(_messages: Sequence[ChatMessage], index: int) -> str:
        calls.append(index)
        return "Action: move left" if len(calls) <= 2 else "Action: move right"

    value = FunctionValueModel(_prefers_right)
    ctx = _ctx(Corridor(3), ScriptedPolicy(rule=rule), value, max_steps=1)
    trajectory = await QGuided(candidates=2, resample_rounds=1).run(ctx, TASK, seed=0)
    (step,) = trajectory.steps
    assert [sc.candidate.action for sc in step.considered] == ["move left", "move right"]
    assert step.candidate.action == "move right"
    assert ctx.tally.samples == 3

    calls.clear()
    plain = _ctx(Corridor(3), ScriptedPolicy(rule=rule), value, max_steps=1)
    (only,) = (await QGuided(candidates=2).run(plain, TASK, seed=0)).steps
    assert only.candidate.action == "move left"
    assert plain.tally.samples == 2
    assert make_strategy("qlass:3", resample_rounds=2) == QGuided(3, 0.7, 2)


async def test_rollout_oracle_values_candidates_by_the_env_reward_of_their_rollouts() -> None:
    """'move right' finishes the corridor (exact value 1); 'move left' is valued by three
    rollouts of the policy's single sample ('move left'), which never finish (0). The
    oracle goes right where a value model preferring 'left' would not, and every rollout's
    env steps and tokens are in the episode's accounting."""
    env = Corridor(1)
    policy = ScriptedPolicy(rule=_alternate)
    ctx = _ctx(env, policy, max_steps=2)
    trajectory = await RolloutOracle(candidates=2, rollouts=3).run(ctx, TASK, seed=0)
    (step,) = trajectory.steps
    assert step.candidate.action == "move right"
    assert trajectory.success
    assert [sc.value for sc in step.considered] == [0.0, 1.0]
    # 'left' executed once and rolled out 3 x 1 step, 'right' executed once, then the
    # chosen 'right' played for real.
    assert trajectory.env_steps == (1 + 3) + 1 + 1
    assert len(policy.calls) == 1 + 3
    sampled = _alternate([], 0).split() + _alternate([], 1).split()
    assert trajectory.usage.completion_tokens == len(sampled) + 3 * len(_alternate([], 0).split())
    assert make_strategy("rollout_oracle:4").name == "rollout_oracle:4"
    assert not RolloutOracle.needs_value
