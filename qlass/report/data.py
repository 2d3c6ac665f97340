"""What the reports read from the tree store: a run's config, its episodes grouped by
stage, and strategy names taken apart into a family and a budget.

Everything here reads the store through its public repositories; nothing is computed
that the store does not hold.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from pydantic import ValidationError

from qlass.config import RunConfig
from qlass.errors import ConfigError, UnknownNameError
from qlass.storage import EpisodeRecord, LabelSetRecord, RunRecord, TreeStore, trajectory_from_json
from qlass.types import Trajectory

__all__ = [
    "FAMILY_ORDER",
    "RunEpisodes",
    "episode_trajectory",
    "load_episodes",
    "pick_label_set",
    "split_strategy",
    "stored_config",
    "strategy_sort_key",
]

FAMILY_ORDER = ("greedy", "sampled", "best_of_n", "qlass", "beam", "rollout_oracle")
"""The order strategy families appear in tables and legends (others follow, by name)."""

_BUDGET = re.compile(r"^(?P<family>.+):(?P<k>\d+)$")


def split_strategy(name: str) -> tuple[str, int | None]:
    """``'best_of_n:4'`` -> ``('best_of_n', 4)``; ``'greedy'`` -> ``('greedy', None)``."""
    match = _BUDGET.match(name)
    if match is None:
        return name, None
    return match["family"], int(match["k"])


def strategy_sort_key(name: str) -> tuple[int, str, int]:
    """Sort strategies by family (:data:`FAMILY_ORDER`), then budget."""
    family, budget = split_strategy(name)
    rank = FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)
    return rank, family, -1 if budget is None else budget


def stored_config(run: RunRecord) -> RunConfig:
    """The run's configuration as stored with it.

    Raises:
        ConfigError: the stored config does not validate (written by another qlass version).
    """
    try:
        return RunConfig.model_validate(dict(run.config))
    except ValidationError as exc:
        raise ConfigError(
            f"the stored config of run {run.name!r} does not validate with this qlass "
            f"version: {exc.errors()[0]['msg']} at {'.'.join(map(str, exc.errors()[0]['loc']))}"
        ) from exc


def episode_trajectory(episode: EpisodeRecord) -> Trajectory:
    """The stored trajectory of an episode, ``info`` included.

    :func:`qlass.storage.trajectory_from_json` does not rebuild ``Trajectory.info``
    (where Best-of-N keeps its oracle upper bound), so it is restored here from the JSON.
    """
    trajectory = trajectory_from_json(episode.trajectory)
    info = episode.trajectory.get("info")
    if isinstance(info, Mapping) and info and not trajectory.info:
        trajectory = replace(trajectory, info=dict(info))
    return trajectory


@dataclass(frozen=True)
class RunEpisodes:
    """A run's episodes grouped by stage (``eval:<split>:<fingerprint>``, ...).

    ``stages`` lists the stage names in the order their first episode was stored.
    """

    by_stage: Mapping[str, tuple[EpisodeRecord, ...]]

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(self.by_stage)

    def latest_stage(self, prefix: str = "eval:") -> str | None:
        """The stage (among those starting with ``prefix``, else any) holding the newest
        episode; ``None`` when the run has no episodes."""
        candidates = [s for s in self.by_stage if s.startswith(prefix)] or list(self.by_stage)
        if not candidates:
            return None
        return max(candidates, key=lambda s: max(e.id for e in self.by_stage[s]))

    def select(self, stage: str | None) -> tuple[str | None, tuple[EpisodeRecord, ...]]:
        """The episodes of ``stage`` (``None``: :meth:`latest_stage`).

        Raises:
            UnknownNameError: no such stage; the message lists the stored ones.
        """
        chosen = stage if stage is not None else self.latest_stage()
        if chosen is None:
            return None, ()
        if chosen not in self.by_stage:
            known = ", ".join(self.by_stage) or "none"
            raise UnknownNameError(f"no episodes of stage {chosen!r} (stages: {known})")
        return chosen, self.by_stage[chosen]


async def load_episodes(store: TreeStore, run_id: int) -> RunEpisodes:
    """All episodes of the run, grouped by stage (insertion order kept)."""
    grouped: dict[str, list[EpisodeRecord]] = {}
    for episode in await store.episodes.of_run(run_id):
        grouped.setdefault(episode.stage, []).append(episode)
    return RunEpisodes({stage: tuple(items) for stage, items in grouped.items()})


def pick_label_set(
    sets: Sequence[LabelSetRecord], config: RunConfig, wanted: int | None = None
) -> LabelSetRecord | None:
    """The label set to show: ``wanted`` if given, else the one matching the run's label
    settings (gamma, normalisation, reward mode, kind), else the newest; ``None`` if there is none.

    Raises:
        UnknownNameError: ``wanted`` is not a label set of the run.
    """
    if wanted is not None:
        for label_set in sets:
            if label_set.id == wanted:
                return label_set
        known = ", ".join(str(s.id) for s in sets) or "none"
        raise UnknownNameError(f"no label set {wanted} in this run (label sets: {known})")
    labels = config.labels
    for label_set in reversed(sets):
        if (
            label_set.gamma == labels.gamma
            and label_set.normalize == labels.normalize
            and label_set.intermediate_reward == labels.intermediate_reward
            and label_set.kind == labels.kind
        ):
            return label_set
    return sets[-1] if sets else None
