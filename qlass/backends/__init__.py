"""Policy backends: the ``Policy`` protocol, its backends, and the wrappers around them.

Backends (imported lazily, by name, through :func:`create_policy` / :func:`build_policy`):

- ``litellm`` (:mod:`qlass.backends.litellm_backend`): any LiteLLM provider string,
  e.g. a vLLM or ``qlass serve`` server (``hosted_vllm/NAME``) or ``openai/gpt-4o``;
- ``hf`` (:mod:`qlass.backends.hf`): a local transformers model, micro-batched;
- ``scripted`` (:mod:`qlass.backends.scripted`): fixed or rule-based turns, for tests.

Wrappers (:mod:`qlass.backends.wrappers`, :mod:`qlass.backends.cache`) add concurrency and
rate limits, retries, and the request cache around any of them.
"""

from qlass.backends.base import CallCache, Policy
from qlass.backends.cache import CachedPolicy, InMemoryCallCache, cache_key, sample_seed
from qlass.backends.registry import BACKENDS, BackendSpec, build_policy, create_policy
from qlass.backends.scripted import ScriptedCall, ScriptedPolicy
from qlass.backends.wrappers import (
    ConcurrencyLimitedPolicy,
    PolicyWrapper,
    RateLimitedPolicy,
    RetryingPolicy,
    TokenBucket,
)

__all__ = [
    "BACKENDS",
    "BackendSpec",
    "CachedPolicy",
    "CallCache",
    "ConcurrencyLimitedPolicy",
    "InMemoryCallCache",
    "Policy",
    "PolicyWrapper",
    "RateLimitedPolicy",
    "RetryingPolicy",
    "ScriptedCall",
    "ScriptedPolicy",
    "TokenBucket",
    "build_policy",
    "cache_key",
    "create_policy",
    "sample_seed",
]
