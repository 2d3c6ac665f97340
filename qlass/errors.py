"""The one exception tree of qlass.

Errors a user can fix by changing what they asked for (``UserError``) are kept apart from
errors that happened while running (``RuntimeFailure``). Exceptions of LiteLLM, the
simulators, SQLAlchemy and HTTP clients are translated into these at the boundary where
they occur, with the original kept as ``__cause__``.

    QlassError
    ├── TrainingStopped               a stop was asked for mid-training; nothing was saved
    ├── InvalidActionError            (also a ValueError) an empty or non-UTF-8 action reached Env.step: a bug
    ├── UserError                     bad input: fix the command, config or data
    │   ├── ConfigError               invalid or unreadable configuration (names the field)
    │   ├── UnknownNameError          unknown env, task, backend, strategy or run
    │   ├── MissingDependencyError    an optional extra is not installed
    │   └── MissingDataError          local data (ALFWorld, a checkpoint) not where it was said
    └── RuntimeFailure                something failed while running
        ├── EnvError                  a simulator failed
        │   ├── EnvCrashedError       the simulator process died
        │   ├── EnvTimeoutError       a step took longer than the step timeout
        │   ├── TaskGenerationError   the simulator cannot generate this task (its settings admit no game)
        │   ├── NoExpertPathError     the expert search found no winning path within its bound
        │   └── ReplayMismatchError   replaying a prefix did not reach the recorded state
        ├── PolicyError               a policy backend failed
        │   ├── PolicyCallError       the call failed after all retries
        │   │   └── PromptTooLongError  the prompt cannot fit the model's context
        │   └── PolicyTimeoutError    the call timed out after all retries
        ├── ActionParseError          model output holds no parsable action
        ├── ValueModelError           a value model (QNet, scorer server, judge) failed
        ├── StageFailedError          every task of a stage failed: the run stops there
        └── StoreError                the tree store failed
            ├── SchemaVersionError    the DB has a schema this version cannot use
            └── DatabaseUnavailableError  locked, corrupt or unreachable DB
"""

from __future__ import annotations

__all__ = [
    "ActionParseError",
    "ConfigError",
    "DatabaseUnavailableError",
    "EnvCrashedError",
    "EnvError",
    "EnvTimeoutError",
    "InvalidActionError",
    "MissingDataError",
    "MissingDependencyError",
    "NoExpertPathError",
    "PolicyCallError",
    "PolicyError",
    "PolicyTimeoutError",
    "PromptTooLongError",
    "QlassError",
    "ReplayMismatchError",
    "RuntimeFailure",
    "SchemaVersionError",
    "StageFailedError",
    "StoreError",
    "TaskGenerationError",
    "TrainingStopped",
    "UnknownNameError",
    "UserError",
    "ValueModelError",
]


class QlassError(Exception):
    """Base of every error qlass raises on purpose."""


class TrainingStopped(QlassError):
    """A graceful stop (Ctrl-C, SIGTERM) ended training early; the model was not saved."""


class InvalidActionError(QlassError, ValueError):
    """An action that no simulator can take was passed to ``Env.step``: empty or
    whitespace-only, or not encodable as UTF-8 (lone surrogates, e.g. undecodable bytes
    read with ``surrogateescape``).

    A programming error: model output with no parsable action is an invalid *step* of the
    episode (see :mod:`qlass.parsing`) and must never reach a simulator. Rejected before
    it reaches one, it leaves the simulator as it was.
    """


class UserError(QlassError):
    """The request cannot be carried out as given; changing the input fixes it."""


class ConfigError(UserError):
    """A configuration value is invalid; the message names the field."""


class UnknownNameError(UserError):
    """A name (env, task, backend, strategy, run) is not known; the message lists choices."""


EXTRA_OF_MODULE: dict[str, str] = {
    "torch": "local",
    "transformers": "local",
    "accelerate": "local",
    "safetensors": "local",
    "numpy": "report",
    "fastapi": "local",
    "uvicorn": "local",
    "textworld_express": "envs",
    "scienceworld": "envs",
    "py4j": "envs",
    "matplotlib": "report",
    "asyncpg": "postgres",
    "datasets": "datasets",
    "langgraph": "langgraph",
    "alfworld": "alfworld",
    "vllm": "vllm",
    "peft": "peft",
}
"""The extra that installs each optional top-level module (``pip install 'qlass[extra]'``)."""


class MissingDependencyError(UserError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(f"{purpose} needs the '{package}' package: pip install 'qlass[{extra}]'")
        self.package = package
        self.extra = extra

    @classmethod
    def of_import(cls, exc: ImportError, purpose: str) -> MissingDependencyError | None:
        """The error for a failed import of an optional module (``None``: not one)."""
        module = (exc.name or "").partition(".")[0]
        extra = EXTRA_OF_MODULE.get(module)
        return None if extra is None else cls(module, extra, purpose)


class MissingDataError(UserError):
    """Local data the user must provide is missing; the message says what and where."""


class RuntimeFailure(QlassError):
    """Something failed while running; what was committed before it is kept."""


class EnvError(RuntimeFailure):
    """A simulator failed."""


class EnvCrashedError(EnvError):
    """The simulator process died or its connection broke."""


class EnvTimeoutError(EnvError):
    """A simulator call took longer than its timeout."""


class TaskGenerationError(EnvError):
    """The simulator cannot generate this task: its settings admit no game for the task's
    seed. The simulator itself is fine; the task can never be played."""


class NoExpertPathError(EnvError):
    """The expert search (:mod:`qlass.envs.expert`) found no winning path for a task within
    its bound; the gold export skips the task with this reason."""


class ReplayMismatchError(EnvError):
    """Replaying an action prefix from reset reached a different observation than recorded.

    The simulator is not deterministic for this task, so tree nodes cannot be revisited by
    replay.
    """


class PolicyError(RuntimeFailure):
    """A policy backend failed."""


class PolicyCallError(PolicyError):
    """A policy call failed after all retries (HTTP error, rate limit, bad response)."""


class PromptTooLongError(PolicyCallError):
    """The prompt cannot fit the model's context beside ``max_tokens`` (even truncated)."""


class PolicyTimeoutError(PolicyError):
    """A policy call timed out after all retries."""


class ActionParseError(RuntimeFailure):
    """Model output contains no parsable action.

    The episode records the step as invalid; nothing is sent to the environment.
    """

    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text


class ValueModelError(RuntimeFailure):
    """A value model failed: unreachable scorer, bad checkpoint, non-finite scores."""


class StageFailedError(RuntimeFailure):
    """Every task a stage tried failed, so the stages after it have nothing to work on;
    the message gives the first task's cause. What was committed is kept."""


class StoreError(RuntimeFailure):
    """The tree store failed."""


class SchemaVersionError(StoreError):
    """The database has a schema this version of qlass cannot migrate or use."""


class DatabaseUnavailableError(StoreError):
    """The database is locked, corrupt or unreachable."""
