"""Best-first search and MCTS on the corridor: expansion order, committed path and
accounting checked against searches worked out by hand."""

from __future__ import annotations

from collections.abc import Sequence

from qlass.backends.scripted import ScriptedPolicy
from qlass.config import load_config
from qlass.envs.pool import EnvPool
from qlass.parsing import parse_output
from qlass.qnet.base import ValueQuery
from qlass.runtime.context import SearchContext
from qlass.runtime.strategies import MCTS, BestFirst, QGuided, StrategyOptions, make_strategy
from qlass.types import ChatMessage

from .toys import TASK, Corridor


def _left_then_right(messages: Sequence[ChatMessage], index: int) -> str:
    """Every policy call with n=2 proposes 'left' (sample 0) and 'right' (sample 1)."""
    return "Action: move left" if index % 2 == 0 else "Thought: onward\nAction: move right"


class PathValues:
    """Scores a candidate by the path it ends (``'RR'``: right, right); 0 if not listed."""

    def __init__(self, values: dict[str, float]) -> None:
        self.values = values
        self.scored: list[str] = []

    @staticmethod
    def _letter(action: str | None) -> str:
        return "R" if action == "move right" else "L"

    async def score(self, queries: Sequence[ValueQuery]) -> list[float]:
        out = []
        for query in queries:
            path = "".join(self._letter(a) for a in query.history.actions)
            path += self._letter(parse_output(query.candidate_text).action)
            self.scored.append(path)
            out.append(self.values.get(path, 0.0))
        return out

    async def aclose(self) -> None:
        return None


# 'L' looks best from the start, but only 'R' leads on: a one-step arg-max takes the trap.
TRAP = {"L": 0.6, "R": 0.5, "LL": 0.1, "LR": 0.2, "RL": 0.3, "RR": 0.9, "RRR": 1.0}


def _ctx(env: Corridor, value: PathValues, max_steps: int) -> SearchContext:
    return SearchContext(
        policy=ScriptedPolicy(rule=_left_then_right),
        envs=EnvPool.around(env),
        value_model=value,
        max_steps=max_steps,
    )


def test_tree_searches_are_built_from_their_names() -> None:
    strategy = make_strategy("best_first:3", temperature=0.5)
    assert strategy == BestFirst(budget=3, temperature=0.5)
    assert strategy.name == "best_first:3" and strategy.needs_value
    assert make_strategy("mcts:8") == MCTS(iterations=8)
    assert make_strategy("mcts").name == "mcts:4"


def test_tree_search_settings_come_from_the_search_section() -> None:
    config = load_config(
        None, ["search.tree_branching=3", "search.lookahead=4", "search.mcts_exploration=0.5"]
    )
    options = StrategyOptions.from_config(config.search)
    assert make_strategy("best_first:6", options=options) == BestFirst(
        budget=6, branching=3, lookahead=4, temperature=config.search.temperature
    )
    assert make_strategy("mcts:2", options=options) == MCTS(
        iterations=2, branching=3, exploration=0.5, temperature=config.search.temperature
    )


async def test_best_first_executes_nodes_by_value_and_commits_the_best_path() -> None:
    # By hand, budget 3, lookahead 2. Search 1 from the start: frontier L .6, R .5.
    # Execute L (best .6), push LL .1, LR .2; execute R, push RL .3, RR .9; execute RR
    # (best .9, two below the start: not expanded). Budget spent: commit R, R.
    # Search 2 from RR: frontier RRL 0, RRR 1; execute RRR (done, best 1); execute RRL,
    # push RRLL 0, RRLR 0; execute RRLL (ties: first pushed). Commit RRR: the goal.
    env = Corridor(3)
    value = PathValues(TRAP)
    ctx = _ctx(env, value, max_steps=6)
    trajectory = await BestFirst(budget=3, branching=2, lookahead=2).run(ctx, TASK, seed=0)

    assert [s.candidate.action for s in trajectory.steps] == ["move right"] * 3
    assert trajectory.success and trajectory.final_score == 1.0
    assert [s.value for s in trajectory.steps] == [0.5, 0.9, 1.0]
    assert [sc.value for sc in trajectory.steps[0].considered] == [0.6, 0.5]
    # Policy calls at the start, L, R (search 1), RR, RRL (search 2); each candidate scored.
    assert value.scored == ["L", "R", "LL", "LR", "RL", "RR", "RRL", "RRR", "RRLL", "RRLR"]
    assert trajectory.info["searches"] == 2
    assert trajectory.info["nodes_executed"] == 6 == trajectory.env_steps
    # Parents' depths: 0, 0, 1 then 2, 2, 3: the replay a pool may need to position envs.
    assert trajectory.info["replay_bound"] == 8
    replayed = env.steps - trajectory.env_steps
    assert 0 <= replayed <= trajectory.info["replay_bound"]
    assert trajectory.usage.completion_tokens > 0

    # The one-step arg-max (QLASS) on the same values goes left and never reaches the end.
    stepwise = await QGuided(candidates=2).run(_ctx(Corridor(3), PathValues(TRAP), 6), TASK, 0)
    assert stepwise.steps[0].candidate.action == "move left"
    assert not stepwise.success


async def test_best_first_judges_a_finished_node_by_its_value_not_the_env_reward() -> None:
    # 'right' ends the one-room corridor with reward 1, but the value model prefers 'left':
    # the search executes both, and commits 'left' (value .9 > 0) every time.
    env = Corridor(1)
    value = PathValues({"L": 0.9, "LL": 0.9})
    ctx = _ctx(env, value, max_steps=2)
    trajectory = await BestFirst(budget=2, branching=2, lookahead=1).run(ctx, TASK, seed=0)
    assert any(action == "move right" for _, action in env.log)
    assert [s.candidate.action for s in trajectory.steps] == ["move left", "move left"]
    assert not trajectory.success


async def test_mcts_selects_by_mean_value_backs_up_and_commits_the_most_visited_move() -> None:
    # By hand, 3 iterations, exploration 0 (UCT = mean; every new node: 1 visit, its value).
    # Search 1: (1) expand the start: L .6, R .5. (2) select L, execute it, expand LL .1,
    # LR .2, back up .2: L has mean .8/2 = .4. (3) select R (.5 > .4), execute, expand
    # RL .3, RR .9, back up .9: R 1.4/2. Visits tie (2, 2): commit R, the higher mean.
    # Search 2 from R: (1) RR, executed, expanded RRL 0, RRR 1, back up 1; (2, 3) RR then
    # RRR (executed: the goal), a finished node backs up its own value 1. Commit RR (4
    # visits against 1). Search 3: RRR only gathers visits; commit it.
    env = Corridor(3)
    value = PathValues(TRAP)
    ctx = _ctx(env, value, max_steps=6)
    trajectory = await MCTS(iterations=3, branching=2, exploration=0.0).run(ctx, TASK, seed=0)

    assert [s.candidate.action for s in trajectory.steps] == ["move right"] * 3
    assert trajectory.success
    assert [s.value for s in trajectory.steps] == [0.5, 0.9, 1.0]
    assert value.scored == ["L", "R", "LL", "LR", "RL", "RR", "RRL", "RRR"]
    assert trajectory.info["searches"] == 3
    assert trajectory.info["nodes_executed"] == 4 == trajectory.env_steps  # L, R, RR, RRR
    assert trajectory.info["replay_bound"] == 0 + 0 + 1 + 2
    assert 0 <= env.steps - trajectory.env_steps <= trajectory.info["replay_bound"]


async def test_mcts_exploration_visits_a_lower_valued_move() -> None:
    # With exploration 1 and a one-step limit: after the start's expansion (L .6, R .5;
    # 2 visits) L is chosen (.6 + sqrt(ln 2) > .5 + sqrt(ln 2)), executed, and, at the
    # limit, backs up its own .6; then R scores .5 + sqrt(ln 3) = 1.55 > .6 + sqrt(ln 3 / 2)
    # = 1.34 and is executed too. Visits tie (2, 2): L, the higher mean, is committed.
    value = PathValues(TRAP)
    ctx = _ctx(Corridor(3), value, max_steps=1)
    trajectory = await MCTS(iterations=3, branching=2, exploration=1.0).run(ctx, TASK, seed=0)
    assert trajectory.info["nodes_executed"] == 2
    assert [s.candidate.action for s in trajectory.steps] == ["move left"]
    assert value.scored == ["L", "R"]  # at the step limit, children are not expanded
