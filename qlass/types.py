"""Plain data shared by every layer: tasks, chat messages, candidates, steps, trajectories.

Everything here is a frozen dataclass (or a TypedDict for wire-format chat messages) with no
behaviour beyond small derived properties, so that envs, backends, the QNet, the store and
the runtime can exchange values without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, TypedDict

Split = Literal["train", "dev", "test"]
Role = Literal["system", "user", "assistant"]


class ChatMessage(TypedDict):
    """One chat turn in the OpenAI wire format (what LiteLLM and chat templates take)."""

    role: Role
    content: str


class StopReason(StrEnum):
    """Why an episode ended: the env said done, or a limit (or an error) cut it short."""

    DONE = "done"
    STEP_LIMIT = "step_limit"
    TOKEN_LIMIT = "token_limit"
    TIME_LIMIT = "time_limit"
    COST_LIMIT = "cost_limit"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """Identifies one reproducible episode: environment, task, variation (seed) and split.

    ``params`` carries simulator-specific game parameters (TextWorldExpress's
    ``numLocations=5,includeDoors=0`` for example) and is part of the identity.
    """

    env: str
    name: str
    variation: int
    split: Split
    params: str = ""

    @property
    def key(self) -> str:
        """A stable string id, unique per task, used as a DB key and in file names."""
        params = f"[{self.params}]" if self.params else ""
        return f"{self.env}/{self.name}{params}/{self.split}/{self.variation}"


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage (and cost where the provider reports it) of one or more policy calls."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cost_usd + other.cost_usd,
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    """One sampled continuation of the policy.

    ``action`` is ``None`` when the text holds no parsable action; ``parse_error`` then says
    why. Such a candidate is recorded as an invalid step and never sent to a simulator.
    """

    text: str
    action: str | None
    thought: str | None = None
    usage: Usage = Usage()
    parse_error: str | None = None
    cached: bool = False

    @property
    def is_valid(self) -> bool:
        return self.action is not None


@dataclass(frozen=True, slots=True)
class Observation:
    """What an environment shows after ``reset``: the task instruction and the first view."""

    text: str
    instruction: str
    valid_actions: tuple[str, ...] | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepResult:
    """What an environment returns for one action.

    ``reward`` is this step's reward, ``score`` the episode's normalised score so far in
    [0, 1] (for ScienceWorld the highest score reached, divided by 100), which is the final
    reward once ``done``. ``success`` is the simulator's own success flag.
    """

    observation: str
    reward: float
    done: bool
    score: float
    success: bool = False
    valid_actions: tuple[str, ...] | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Turn:
    """One agent turn in a history: the model's full text and what the environment answered."""

    text: str
    action: str | None
    observation: str


@dataclass(frozen=True, slots=True)
class History:
    """The state an agent acts from: the task instruction, first observation and turns so far."""

    instruction: str
    initial_observation: str
    turns: tuple[Turn, ...] = ()

    def extend(self, turn: Turn) -> History:
        return History(self.instruction, self.initial_observation, (*self.turns, turn))

    @property
    def actions(self) -> tuple[str | None, ...]:
        return tuple(t.action for t in self.turns)


@dataclass(frozen=True, slots=True)
class ScoredCandidate:
    """A candidate together with the value model's score for it (``None`` if unscored)."""

    candidate: Candidate
    value: float | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One executed step of an episode, with the alternatives the search considered."""

    candidate: Candidate
    result: StepResult
    considered: tuple[ScoredCandidate, ...] = ()
    value: float | None = None


@dataclass(frozen=True, slots=True)
class Trajectory:
    """A finished (or truncated) episode and its cost."""

    task: TaskSpec
    instruction: str
    initial_observation: str
    steps: tuple[Step, ...]
    final_score: float
    success: bool
    usage: Usage = Usage()
    env_steps: int = 0
    wall_time_s: float = 0.0
    info: Mapping[str, Any] = field(default_factory=dict)
    stop_reason: str = ""
    """A :class:`StopReason` value; ``""`` for an episode stored before qlass recorded it."""

    @property
    def history(self) -> History:
        turns = tuple(
            Turn(s.candidate.text, s.candidate.action, s.result.observation) for s in self.steps
        )
        return History(self.instruction, self.initial_observation, turns)


@dataclass(frozen=True, slots=True)
class LabelledStep:
    """A QNet training example: a state (history), a candidate's text, and its Q label."""

    tree_id: int
    task_key: str
    history: History
    candidate_text: str
    q: float


@dataclass(frozen=True, slots=True)
class StepDecision:
    """What :meth:`Agent.step` chose, and everything it considered.

    Attributes:
        action: the chosen action, ready for your environment; ``None`` when no candidate
            held a parsable ``Action:`` line (do not execute anything then).
        text: the chosen candidate's full text (``Thought: ... Action: ...``).
        value: the value model's score of the chosen candidate (``None`` if unscored).
        candidates: every sampled candidate with its score, in sample order.
        usage: prompt and completion tokens (and cost in USD where the provider has a
            price) of the policy calls of this step.
        strategy: the name of the strategy that decided.
    """

    action: str | None
    text: str
    value: float | None
    candidates: tuple[ScoredCandidate, ...]
    usage: Usage
    strategy: str

    @property
    def candidate(self) -> Candidate:
        """The chosen candidate."""
        for scored in self.candidates:
            if scored.candidate.text == self.text:
                return scored.candidate
        return Candidate(self.text, self.action)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (for logs, LangGraph state, HTTP answers)."""
        return {
            "action": self.action,
            "text": self.text,
            "value": self.value,
            "strategy": self.strategy,
            "candidates": [
                {"text": c.candidate.text, "action": c.candidate.action, "value": c.value}
                for c in self.candidates
            ],
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "cost_usd": self.usage.cost_usd,
            },
        }
