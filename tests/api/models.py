"""Small real models for the API and example tests, built once per test session.

- :func:`trained_policy`: a tiny policy behaviour-cloned (with qlass's own BC code) on
  TextWorldExpress coin gold paths, in exactly the prompt layout the :class:`~qlass.Agent`
  sends with ``system_prompt=None, max_turns_in_prompt=1``. It answers ``Action: ...`` and
  solves some games.
- :func:`untrained_qnet`: a QNet (random value head) on that policy's backbone: real
  forward passes, meaningless scores.

Both are cached in the session's base temp folder, so the fixtures of ``tests/api`` and
``tests/examples`` share one copy.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

GAME = "coin"
PARAMS = "numLocations=5,includeDoors=0"
MAX_TURNS = 1


def trained_policy(base: Path) -> Path:
    """A BC policy directory under ``base`` (trained on first call, ~15 s on 2 cores)."""
    target = base / "agent-policy"
    if (target / "config.json").exists():
        return target
    import torch

    from qlass.config import BCConfig
    from qlass.envs.gold import export_gold
    from qlass.envs.registry import list_tasks
    from qlass.runtime.bc import load_conversations, train_policy

    tasks = list_tasks("textworld_express", "train", games=[GAME], params=PARAMS, limit=10)
    expert = base / "agent-expert.jsonl"
    asyncio.run(export_gold("textworld_express", tasks, expert, tries=1))
    conversations = [[m for m in c if m["role"] != "system"] for c in load_conversations(expert)]
    config = BCConfig(
        layers=2, width=64, heads=2, vocab_size=512, epochs=25, lr=1e-2, max_length=768
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared 2-core box
    try:
        train_policy(conversations, config, output_dir=target, system_prompt=None, max_turns=1)
    finally:
        torch.set_num_threads(threads)
    return target


def untrained_qnet(base: Path, policy_dir: Path) -> Path:
    """A QNet checkpoint (random head) on ``policy_dir``'s backbone."""
    target = base / "agent-qnet"
    if (target / "qnet_config.json").exists():
        return target
    from qlass.qnet.model import QNet, load_tokenizer

    qnet = QNet.from_backbone(policy_dir, head_dim=32, max_length=1024, seed=5)
    return qnet.save_pretrained(target, tokenizer=load_tokenizer(policy_dir))
