"""Backends by name, with lazy imports: ``create_policy("litellm", model=...)``.

Each backend registers a factory and whether it is *remote* (reached over the network:
rate limits, concurrency limits and retries apply) or *local*. :func:`build_policy` turns a
:class:`~qlass.config.PolicyConfig` into the full stack: backend, then (remote only) rate
limit, concurrency limit and retries, then the request cache.

Swapping a local model for GPT-4o is a config change::

    [policy]                          [policy]
    backend = "hf"                    backend = "litellm"
    model = "runs/bc-policy"          model = "openai/gpt-4o"
                                      api_key_env = "OPENAI_API_KEY"
                                      rpm = 500
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qlass._registry import Registry
from qlass.backends.base import CallCache, Policy
from qlass.backends.cache import CachedPolicy
from qlass.backends.wrappers import ConcurrencyLimitedPolicy, RateLimitedPolicy, RetryingPolicy
from qlass.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from qlass.config import PolicyConfig

__all__ = ["BACKENDS", "BackendSpec", "build_policy", "create_policy"]


Arguments = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """How to make a backend.

    ``load()`` imports and returns its class (or factory); ``from_config`` maps a
    :class:`~qlass.config.PolicyConfig` to its constructor arguments; ``remote`` backends
    get rate limits, a concurrency limit and retries in :func:`build_policy`.
    """

    load: Callable[[], Callable[..., Policy]]
    from_config: Callable[[PolicyConfig], Arguments]
    remote: bool
    description: str


def _load_litellm() -> Callable[..., Policy]:
    from qlass.backends.litellm_backend import LiteLLMPolicy

    return LiteLLMPolicy


def _load_hf() -> Callable[..., Policy]:
    try:
        from qlass.backends.hf import HFPolicy
    except ImportError as exc:
        package = (exc.name or "torch").split(".")[0]
        raise MissingDependencyError(package, "local", "the local transformers backend") from exc
    return HFPolicy


def _load_scripted() -> Callable[..., Policy]:
    from qlass.backends.scripted import ScriptedPolicy

    return ScriptedPolicy


def _model(config: PolicyConfig) -> str:
    if not config.model:
        raise ConfigError(
            f"policy.model must be set for backend {config.backend!r} (a model directory for "
            "'hf', a LiteLLM model string for 'litellm', '|'-separated actions for 'scripted')"
        )
    return config.model


def _litellm_args(config: PolicyConfig) -> Arguments:
    bases = [b.strip() for b in (config.api_base or "").split(",") if b.strip()]
    api_base: str | list[str] | None = bases[0] if len(bases) == 1 else bases or None
    options = {"api_base": api_base, "api_key_env": config.api_key_env}
    return (_model(config),), {**options, "timeout_s": config.timeout_s}


def _hf_args(config: PolicyConfig) -> Arguments:
    return (_model(config),), {"device": config.device, "max_batch": config.max_batch}


def _scripted_args(config: PolicyConfig) -> Arguments:
    # policy.model lists the actions, '|'-separated: "look around|move north".
    return (), {"actions": [a.strip() for a in _model(config).split("|") if a.strip()]}


BACKENDS: Registry[BackendSpec] = Registry(
    "policy backend",
    {
        "litellm": BackendSpec(
            _load_litellm, _litellm_args, True, "any LiteLLM model (vLLM server, GPT-4o, ...)"
        ),
        "hf": BackendSpec(_load_hf, _hf_args, False, "a local transformers model directory"),
        "scripted": BackendSpec(
            _load_scripted, _scripted_args, False, "fixed or rule-based turns (tests)"
        ),
    },
)


def create_policy(backend: str, *args: Any, **options: Any) -> Policy:
    """Make the bare backend ``backend`` with its own arguments (no wrappers).

    Raises:
        UnknownNameError: no such backend.
        MissingDependencyError: the backend's optional packages are not installed.
        ConfigError: an option the backend does not take.
    """
    factory = BACKENDS[backend].load()
    try:
        inspect.signature(factory).bind(*args, **options)
    except TypeError as exc:
        raise ConfigError(f"policy backend {backend!r}: {exc}") from exc
    return factory(*args, **options)


def build_policy(
    config: PolicyConfig,
    *,
    cache: CallCache | None = None,
    options: Mapping[str, Any] | None = None,
) -> Policy:
    """The policy a run uses: backend + limits + retries (remote) + request cache.

    ``cache`` (the tree store's call cache) is used when ``config.cache`` is on; only
    seeded calls are cached. ``options`` override or add backend constructor arguments.
    A backend is loaded from disk or imported here: call this outside the event loop.
    """
    spec = BACKENDS[config.backend]
    args, kwargs = spec.from_config(config)
    policy = create_policy(config.backend, *args, **{**kwargs, **(options or {})})
    if spec.remote:
        if config.rpm or config.tpm:
            policy = RateLimitedPolicy(policy, rpm=config.rpm, tpm=config.tpm)
        policy = ConcurrencyLimitedPolicy(policy, config.max_concurrency)
        if config.retries:
            policy = RetryingPolicy(policy, retries=config.retries)
    if cache is not None and config.cache:
        policy = CachedPolicy(policy, cache)
    return policy
