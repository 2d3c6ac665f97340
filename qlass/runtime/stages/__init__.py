"""The pipeline's stages: their names, the config sections each one's output depends on,
and one module per stage body.

    gold        qlass.runtime.stages.gold         expert trajectories from gold paths
    bc          qlass.runtime.stages.bc           behaviour cloning of the policy
    explore     qlass.runtime.stages.explore      exploration trees of the train split
    label       qlass.runtime.stages.label        the run's Q-label set
    train_qnet  qlass.runtime.stages.train_qnet   the QNet on the labelled trees
    eval        qlass.runtime.stages.evaluation   the strategies on the eval split
    self_train  qlass.runtime.stages.self_train   self-training rounds (optional)

Each module has ``async def run(ctx, *, force=False) -> list[StageResult]`` over the small
interface :class:`~qlass.runtime.stages.base.StageContext` (a
:class:`~qlass.runtime.pipeline.Pipeline` is one). This package itself holds only the
tables, so that light code (the CLI's help, reports) can name stages without importing
models and simulators.
"""

from __future__ import annotations

__all__ = ["DEPENDS", "FROZEN", "OPTIONAL_STAGES", "STAGES"]

STAGES = ("gold", "bc", "explore", "label", "train_qnet", "eval")
OPTIONAL_STAGES = ("self_train",)

# A stage's fingerprint hashes these sections (and the seed).
DEPENDS: dict[str, tuple[str, ...]] = {
    "gold": ("env",),
    "bc": ("env", "bc", "policy"),
    "explore": ("env", "bc", "policy", "explore"),
    "label": ("env", "bc", "policy", "explore", "labels"),
    "train_qnet": ("env", "bc", "policy", "explore", "labels", "qnet"),
    "eval": ("env", "bc", "policy", "explore", "labels", "qnet", "search", "eval"),
    "self_train": (
        "env",
        "bc",
        "policy",
        "explore",
        "labels",
        "qnet",
        "search",
        "eval",
        "self_train",
    ),
}

# Stages whose change makes a run's stored trees meaningless: a new run name is needed.
FROZEN = ("gold", "bc", "explore")
