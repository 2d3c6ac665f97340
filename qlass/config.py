"""Typed run configuration: one pydantic model per concern, composed into :class:`RunConfig`.

A config is loaded from a TOML or YAML file, then overridden by environment variables
(``QLASS_SECTION__FIELD=value``, pydantic-settings style, when the caller passes the
environment: the CLI does) and by ``--set section.field=value`` pairs from the command line,
in that order (defaults < file < environment < ``--set``), validated up front (errors name
the field, and the variable when the value came from one), and saved into the DB with every
run. Defaults are the paper's settings (../PAPER.md) where the paper has one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qlass._config_env import EnvOverride
from qlass._config_env import env_overrides as _env_overrides
from qlass._config_files import apply_overrides, format_validation_error, read_config_file
from qlass._config_fingerprint import ADDED_LATER, fingerprint_data
from qlass.errors import ConfigError

__all__ = [
    "BCConfig",
    "BudgetConfig",
    "EnvConfig",
    "EnvOverride",
    "EvalConfig",
    "ExploreConfig",
    "LabelConfig",
    "LoRAConfig",
    "PolicyConfig",
    "QNetConfig",
    "RayConfig",
    "RunConfig",
    "SearchConfig",
    "SelfTrainConfig",
    "StoreConfig",
    "apply_overrides",
    "env_overrides",
    "load_config",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class StoreConfig(_Section):
    """Where exploration trees, labels, runs and the policy-call cache live."""

    url: str | None = Field(
        None,
        description="SQLAlchemy async URL (sqlite+aiosqlite:///FILE, postgresql+asyncpg://...) "
        "or a file path; None: qlass.db in the run folder",
    )
    run_lease_s: float = Field(
        120.0,
        gt=0,
        description="a running run's process renews its lease every quarter of this; a "
        "run not renewed for this long (its process was killed outright) reads as interrupted",
    )


class EnvConfig(_Section):
    """Which simulator and tasks to use."""

    name: str = Field("textworld_express", description="env registry name")
    games: tuple[str, ...] | None = Field(
        None, description="TextWorldExpress games or ScienceWorld tasks; None: all of the env's"
    )
    params: str | None = Field(
        None,
        description="simulator parameters: TWX game params (numLocations=5,includeDoors=0), "
        "ScienceWorld simplifications (default 'easy' as in the paper)",
    )
    max_steps: int | None = Field(
        None, ge=1, description="step limit per episode; None: the env's own (paper) limit or 30"
    )
    pool_size: int = Field(4, ge=1, description="live simulator instances at most")
    gold_tries: int = Field(
        1,
        ge=1,
        description="gold paths asked per task from a simulator's own gold agent, the shortest "
        "kept; matters only where that agent is random (no built-in env: TextWorldExpress's "
        "random ones are replaced by a deterministic search)",
    )
    step_timeout_s: float = Field(30.0, gt=0, description="a step slower than this fails")
    train_tasks: int | None = Field(None, ge=1, description="cap on training tasks (None: all)")
    eval_tasks: int | None = Field(None, ge=1, description="cap on evaluation tasks (None: all)")
    data_dir: Path | None = Field(None, description="ALFWorld's game files (else ALFWORLD_DATA)")
    server_url: str | None = Field(None, description="env server URL (WebShop)")


class PolicyConfig(_Section):
    """The policy LLM: a backend name and its model."""

    backend: str = Field("hf", description="'hf' (local transformers), 'litellm' or 'scripted'")
    model: str | None = Field(
        None, description="model dir (hf) or LiteLLM model string; None: the run's BC policy"
    )
    prompt: Literal["full", "instructions", "none"] = Field(
        "full",
        description="system prompt: instructions + in-context example, instructions only, "
        "or none (a policy fine-tuned on this format needs none)",
    )
    api_base: str | None = Field(
        None, description="OpenAI-compatible base URL (litellm); several, comma-separated"
    )
    api_key_env: str | None = Field(
        None, description="environment variable holding the API key (never the key itself)"
    )
    temperature: float = Field(0.7, ge=0, description="sampling temperature for exploration")
    max_tokens: int = Field(64, ge=1, description="completion tokens per turn at most")
    max_turns_in_prompt: int | None = Field(
        None, ge=0, description="keep only this many recent turns in the prompt"
    )
    max_concurrency: int = Field(16, ge=1, description="requests in flight at most")
    rpm: int | None = Field(None, ge=1, description="requests per minute limit")
    tpm: int | None = Field(None, ge=1, description="tokens per minute limit")
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout")
    retries: int = Field(4, ge=0, description="retries on 429/5xx/timeouts")
    cache: bool = Field(True, description="answer seeded calls from the DB on rerun/resume")
    device: str = Field("auto", description="'cpu', 'cuda' or 'auto' (hf)")
    max_batch: int = Field(32, ge=1, description="micro-batch size (hf)")


class LoRAConfig(_Section):
    """A LoRA adapter (peft, ``qlass[peft]``): only the adapter trains, saved in PEFT's layout
    (what vLLM serves with ``--enable-lora``). ``rank`` 0 trains every weight instead."""

    rank: int = Field(0, ge=0, description="LoRA rank r; 0: no adapter (full fine-tuning)")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] | None = Field(
        None, description="module names to adapt (q_proj, v_proj...); None: every linear layer"
    )


class BCConfig(_Section):
    """Behaviour cloning on expert trajectories (loss on agent turns only)."""

    base_model: str | None = Field(
        None, description="local checkpoint to fine-tune; None trains a small model from scratch"
    )
    output_dir: Path | None = Field(None, description="where the policy goes; None: run folder")
    expert_file: Path | None = Field(
        None, description="expert trajectories JSONL; None: exported from the simulator"
    )
    examples: int | None = Field(
        None, ge=0, description="cap on expert trajectories used (0: no BC, the untrained policy)"
    )
    epochs: float = Field(20.0, gt=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(1024, ge=16, description="tokens per training sequence")
    layers: int = Field(4, ge=1, description="from-scratch model depth")
    width: int = Field(128, ge=16, description="from-scratch model width")
    heads: int = Field(4, ge=1)
    vocab_size: int = Field(1024, ge=64, description="from-scratch tokenizer vocabulary")
    lora: LoRAConfig = Field(LoRAConfig(), json_schema_extra=ADDED_LATER)
    bf16: bool | None = Field(
        None,
        description="bf16 mixed precision (and a bf16 base under LoRA); None: on a bf16 GPU",
        json_schema_extra=ADDED_LATER,
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations (less memory)", json_schema_extra=ADDED_LATER
    )


class ExploreConfig(_Section):
    """Exploration-tree construction (paper: W=2, D up to 8, prune depth 3, T=0.7)."""

    width: int = Field(2, ge=1, description="W: candidates sampled per expanded node")
    max_depth: int = Field(8, ge=1, description="D: depth beyond which branches are not expanded")
    min_prune_depth: int = Field(
        3, ge=0, description="beyond this depth only one child is expanded further"
    )
    temperature: float = Field(0.7, ge=0)
    concurrency: int = Field(8, ge=1, description="trees grown at once")
    tasks: int | None = Field(
        None, ge=1, description="train tasks to grow trees for (None: env.train_tasks)"
    )
    duplicate_actions: Literal["keep", "merge", "resample"] = Field(
        "keep",
        description="when a node's W samples repeat an action: keep the twins (paper's "
        "code), merge them into one child, or resample to get W different actions",
    )
    resample_rounds: int = Field(
        2, ge=0, description="extra policy calls per node at most when resampling duplicates"
    )


class LabelConfig(_Section):
    """Bellman Q labels on the trees."""

    gamma: float = Field(0.9, ge=0, le=1, description="discount")
    normalize: bool = Field(True, description="per-tree min-max normalisation (paper)")
    intermediate_reward: Literal["zero", "env"] = Field(
        "zero", description="'zero' as in the paper, or the simulator's step reward"
    )
    max_triples_per_tree: int = Field(300, ge=1, description="training triples per tree")
    kind: Literal["bellman", "mc_mean", "outcome"] = Field(
        "bellman",
        description="value signal: 'bellman' Q (paper), 'mc_mean' (mean leaf reward below "
        "the node), 'outcome' (the reward of the node's first-sampled trajectory)",
    )


class QNetConfig(_Section):
    """QNet training (paper: batch 64, 3 epochs, lr 1e-5 cosine, warmup 0.03, len 4096)."""

    base_model: str | None = Field(None, description="backbone dir; None: the BC policy")
    output_dir: Path | None = Field(None, description="where the QNet goes; None: run folder")
    head_dim: int = Field(1024, ge=1)
    batch_size: int = Field(64, ge=1, description="global batch per optimizer step")
    micro_batch_size: int = Field(
        8, ge=1, description="sequences per forward pass (gradient accumulation makes the rest)"
    )
    epochs: float = Field(3.0, gt=0)
    lr: float = Field(1e-5, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    max_length: int = Field(4096, ge=16)
    max_turns: int | None = Field(
        None, ge=0, description="history turns the QNet reads (None: all, as in the paper)"
    )
    dev_fraction: float = Field(0.1, ge=0, lt=1, description="tasks held out for dev MSE")
    rank_weight: float = Field(
        0.0,
        ge=0,
        description="weight of a sibling ranking loss added to MSE (0: the paper's MSE only)",
    )
    lora: LoRAConfig = Field(LoRAConfig(), json_schema_extra=ADDED_LATER)
    bf16: bool | None = Field(
        None,
        description="bf16 mixed precision (and a bf16 base under LoRA); None: on a bf16 GPU",
        json_schema_extra=ADDED_LATER,
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations (less memory)", json_schema_extra=ADDED_LATER
    )
    max_batch: int = Field(32, ge=1, description="scorer micro-batch size")


class SearchConfig(_Section):
    """Inference-time strategies to compare."""

    strategies: tuple[str, ...] = Field(
        ("greedy", "best_of_n:2", "qlass:2"),
        description="strategies to evaluate: greedy, sampled, best_of_n:N, qlass:M, beam:B, "
        "best_first:K, mcts:K; rollout_oracle:M is a diagnostic (reads the env's reward)",
    )
    value_model: str = Field(
        "qnet", description="value model kind: qnet, qnet-server, constant, random, judge"
    )
    value_model_path: str | None = Field(
        None, description="QNet dir or scorer URL (qnet-server); None: the run's trained QNet"
    )
    temperature: float = Field(0.7, ge=0, description="sampling temperature of search")
    resample_rounds: int = Field(
        0,
        ge=0,
        description="qlass:M: extra policy calls per step at most to get M different "
        "actions (0: candidates as sampled, duplicates included, as in the paper)",
    )
    oracle_terminal_reward: bool = Field(
        False,
        description="ABLATION ONLY: score finished candidates by the true env reward "
        "(the authors' released behaviour; leaks test reward)",
    )
    tree_branching: int = Field(
        2,
        ge=1,
        description="best_first:K and mcts:K: children sampled per expanded node",
        json_schema_extra=ADDED_LATER,
    )
    lookahead: int = Field(
        2,
        ge=1,
        description="best_first:K: how many steps below the current state it expands",
        json_schema_extra=ADDED_LATER,
    )
    mcts_exploration: float = Field(
        1.0, ge=0, description="mcts:K: UCT exploration constant c", json_schema_extra=ADDED_LATER
    )
    oracle_rollouts: int = Field(
        4,
        ge=1,
        description="rollout_oracle:M: sampled rollouts to the true reward per candidate",
        json_schema_extra=ADDED_LATER,
    )


class EvalConfig(_Section):
    """Evaluation split and sizes. Tune on dev; test is for the final report only."""

    split: Literal["dev", "test"] = Field("dev")
    concurrency: int = Field(
        8, ge=1, description="episodes at once per strategy (strategies run side by side)"
    )
    token_limit: int | None = Field(
        None, ge=1, description="per episode: prompt + completion tokens at most (None: no limit)"
    )
    completion_token_limit: int | None = Field(
        None, ge=1, description="per episode: completion tokens at most"
    )
    time_limit_s: float | None = Field(
        None, gt=0, description="per episode: wall time from reset, seconds"
    )
    cost_limit_usd: float | None = Field(
        None, gt=0, description="per episode: policy cost in USD (LiteLLM's pricing)"
    )


class SelfTrainConfig(_Section):
    """Self-training: collect Q-guided episodes on train tasks, fine-tune on the good ones."""

    rounds: int = Field(2, ge=1)
    strategy: str = Field("qlass:2", description="strategy that collects the episodes")
    tasks: int | None = Field(None, ge=1, description="train tasks per round (None: all)")
    min_score: float = Field(1.0, ge=0, le=1, description="keep episodes scoring at least this")
    include_expert: bool = Field(True, description="also train on the expert trajectories")
    epochs: float = Field(3.0, gt=0)
    lr: float = Field(3e-4, gt=0)


class BudgetConfig(_Section):
    """What a whole run may spend on fresh policy calls over all its stages (cached answers
    are free). Reaching it stops new work gracefully; rerun with a higher budget to resume.
    Not part of any stage's fingerprint, so raising it replays nothing."""

    tokens: int | None = Field(
        None, ge=1, description="prompt + completion tokens for the run (None: no budget)"
    )
    cost_usd: float | None = Field(
        None, gt=0, description="policy cost in USD for the run (LiteLLM's pricing)"
    )


class RayConfig(_Section):
    """How ``qlass explore/eval/run --executor ray`` use a Ray cluster (docs/scale-out.md).
    Not part of any stage's fingerprint: results do not depend on where they are made."""

    address: str | None = Field(
        None,
        description="cluster to join ('auto', 'ray://head:10001'); None: $RAY_ADDRESS, "
        "else a local Ray started for the command",
    )
    actors: int = Field(
        2,
        ge=1,
        description="Ray actors (an explore worker or an eval share each: own envs, policy)",
    )
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs Ray reserves per actor")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per actor (a local QNet/policy)")
    max_restarts: int = Field(
        3, ge=-1, description="times Ray restarts an actor whose process died (-1: no limit)"
    )


class RunConfig(BaseModel):
    """Everything one run needs; stored in the DB so a run can be reproduced or resumed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("qlass", description="run name (unique within a store)")
    seed: int = Field(0, description="seed for every random choice of the run")
    run_dir: Path | None = Field(None, description="the run's folder; None: runs/<name>")
    store: StoreConfig = StoreConfig()
    env: EnvConfig = EnvConfig()
    policy: PolicyConfig = PolicyConfig()
    bc: BCConfig = BCConfig()
    explore: ExploreConfig = ExploreConfig()
    labels: LabelConfig = LabelConfig()
    qnet: QNetConfig = QNetConfig()
    search: SearchConfig = SearchConfig()
    eval: EvalConfig = EvalConfig()
    self_train: SelfTrainConfig = SelfTrainConfig()
    budget: BudgetConfig = BudgetConfig()
    ray: RayConfig = RayConfig()

    @field_validator("name")
    @classmethod
    def _name_is_simple(cls, value: str) -> str:
        if not value or any(ch in value for ch in "/\\\n"):
            raise ValueError("must be non-empty and hold no slash or newline")
        return value

    @property
    def directory(self) -> Path:
        """The run's folder: models, exported data, reports (and the SQLite DB by default)."""
        return self.run_dir if self.run_dir is not None else Path("runs") / self.name

    @property
    def store_url(self) -> str:
        """The store URL, defaulting to ``qlass.db`` in the run folder."""
        url = self.store.url or str(self.directory / "qlass.db")
        return url if "://" in url else f"sqlite+aiosqlite:///{url}"

    @property
    def policy_dir(self) -> Path:
        return self.bc.output_dir or self.directory / "policy"

    @property
    def qnet_dir(self) -> Path:
        return self.qnet.output_dir or self.directory / "qnet"

    def section_fingerprint(self, *sections: str) -> str:
        """A hash of some sections (and the seed): what one stage depends on."""
        chosen: dict[str, Any] = {name: fingerprint_data(getattr(self, name)) for name in sections}
        chosen["seed"] = self.seed
        text = json.dumps(chosen, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def fingerprint(self) -> str:
        """A short hash of the config; stages are skipped when it matches a stored one."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


def env_overrides(environ: Mapping[str, str]) -> list[EnvOverride]:
    """The :class:`RunConfig` fields ``environ`` sets (see :mod:`qlass._config_env`)."""
    return _env_overrides(environ, RunConfig)


def load_config(
    path: Path | None = None,
    overrides: Iterable[str] = (),
    *,
    environ: Mapping[str, str] | None = None,
) -> RunConfig:
    """Load a :class:`RunConfig` from an optional TOML/YAML file, the ``QLASS_*`` variables
    of ``environ`` (see :func:`env_overrides`; ``None``: none) and CLI overrides, in that
    order of precedence.

    Raises:
        ConfigError: unreadable file, bad syntax, an unknown ``QLASS_*__*`` variable, or a
            value that fails validation; the message names each offending field (and the
            variable it came from).
    """
    data = read_config_file(path) if path is not None else {}
    from_env = env_overrides(environ) if environ is not None else []
    data = apply_overrides(data, [item.as_override() for item in from_env])
    data = apply_overrides(data, overrides)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        source = str(path) if path else "defaults"
        variables = {item.field: item.variable for item in from_env}
        raise ConfigError(format_validation_error(exc, source, variables)) from exc
