"""What an env family knows about its environments: :class:`EnvFamily`, and the defaults of
its hooks in :class:`BaseEnvFamily`.

Each family module (``textworld_express``, ``scienceworld``, ``webshop``, ``alfworld``)
exposes one ``FAMILY`` object. Everything the rest of qlass needs to know about a family
goes through it: its tasks, a new env, its prompt, its step limit per task, how to tell
whether a replayed observation shows the recorded state and its expert path of a task.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from qlass.envs.base import Env, EnvPrompt, GoldPathEnv
from qlass.errors import ConfigError, UserError
from qlass.types import TaskSpec

__all__ = ["BaseEnvFamily", "EnvFamily", "gold_actions"]


class EnvFamily(Protocol):
    """What a family module exposes as ``FAMILY``."""

    name: str
    description: str
    extra: str
    own_expert: bool
    """Whether :meth:`expert_actions` is the family's own choice, the same path on every
    call; if not, it is the simulator's gold path, which may be random."""

    def games(self) -> tuple[str, ...]:
        """Games / task types of the family (what ``games=`` selects)."""
        ...

    def create(self, **options: Any) -> Env:
        """A new, not yet started env instance."""
        ...

    def split_sizes(self, **options: Any) -> dict[str, int]:
        """Number of tasks per split (for listings)."""
        ...

    def list_tasks(
        self,
        split: str,
        *,
        games: Sequence[str] | None = None,
        params: Any = None,
        limit: int | None = None,
        **options: Any,
    ) -> list[TaskSpec]:
        """Tasks of a split in a deterministic order."""
        ...

    def config_options(
        self, *, data_dir: Path | None, server_url: str | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The options for :meth:`create` and for :meth:`list_tasks` from the env config's
        ``data_dir`` and ``server_url``; :class:`~qlass.errors.ConfigError` naming the field
        when one is set that this family does not read."""
        ...

    def check_params(self, params: Any, games: Sequence[str] | None = None) -> None:
        """Raise :class:`~qlass.errors.ConfigError` naming the first simulator parameter in
        ``params`` that ``games`` (default: all) do not take, without starting a simulator."""
        ...

    def prompt(self) -> EnvPrompt:
        """Instruction prompt and in-context example."""
        ...

    def max_steps(self, task: TaskSpec) -> int | None:
        """The recommended step limit of ``task`` (the paper's), or None where none is set."""
        ...

    def same_observation(self, replayed: str, recorded: str) -> bool:
        """Whether a replayed observation shows the same state as the recorded one."""
        ...

    async def expert_actions(self, env: Env, task: TaskSpec) -> list[str]:
        """The expert action sequence the gold stage replays for ``task``."""
        ...


class BaseEnvFamily:
    """Defaults for the hooks of :class:`EnvFamily` that most families share."""

    name: str
    own_expert = False

    def config_options(
        self, *, data_dir: Path | None, server_url: str | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """No data folder, no server: setting either is a mistake worth saying."""
        for field, value in (("data_dir", data_dir), ("server_url", server_url)):
            if value is not None:
                raise ConfigError(f"env.{field}: the {self.name} env does not use it")
        return {}, {}

    def check_params(self, params: Any, games: Sequence[str] | None = None) -> None:
        """No simulator parameters to check: anything is accepted here."""

    def prompt(self) -> EnvPrompt:
        """The family's prompt from :mod:`qlass.envs.prompts`."""
        from qlass.envs.prompts import prompt_for

        return prompt_for(self.name)

    def max_steps(self, task: TaskSpec) -> int | None:
        """No recommended limit: the run's ``env.max_steps`` (or 30) applies."""
        return None

    def same_observation(self, replayed: str, recorded: str) -> bool:
        """The same text: a deterministic simulator shows the same state the same way."""
        return replayed == recorded

    async def expert_actions(self, env: Env, task: TaskSpec) -> list[str]:
        """The simulator's gold path (:func:`gold_actions`)."""
        return await gold_actions(env, task)


async def gold_actions(env: Env, task: TaskSpec) -> list[str]:
    """The simulator's gold action sequence for ``task``; ``env`` is left at its reset."""
    if not isinstance(env, GoldPathEnv):
        raise UserError(f"env {task.env!r} has no gold paths (its simulator provides none)")
    return await env.gold_actions(task)
