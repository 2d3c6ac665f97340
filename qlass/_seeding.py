"""Derive independent, reproducible seeds from a run seed and a path of names/numbers.

Every random choice in a run (a policy call at a tree node, a train/dev split, a sampling
cap) gets its own seed from ``derive_seed(run_seed, "explore", task_key, node_path...)``, so
results do not depend on the order in which concurrent work happens to run.
"""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]


def derive_seed(*parts: object) -> int:
    """A 31-bit seed that depends only on ``parts`` (stable across processes and machines)."""
    text = "\x1f".join(repr(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF
