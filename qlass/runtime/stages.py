"""Stage names and the config sections each stage's output depends on.

Kept apart from the pipeline so that light code (the CLI's help, reports) can name stages
without importing models and simulators.
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
