"""Backends by name, and the policy stack a config builds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from qlass.backends import BACKENDS, Policy, build_policy, create_policy
from qlass.backends.cache import CachedPolicy, InMemoryCallCache
from qlass.backends.hf import HFPolicy
from qlass.backends.litellm_backend import LiteLLMPolicy
from qlass.backends.scripted import ScriptedPolicy
from qlass.backends.wrappers import ConcurrencyLimitedPolicy, RateLimitedPolicy, RetryingPolicy
from qlass.config import PolicyConfig
from qlass.errors import ConfigError, MissingDependencyError, UnknownNameError


def stack(policy: object) -> list[type]:
    kinds = []
    while policy is not None:
        kinds.append(type(policy))
        policy = getattr(policy, "inner", None)
    return kinds


def test_known_backends_and_unknown_name() -> None:
    assert sorted(BACKENDS) == ["hf", "litellm", "scripted"]
    with pytest.raises(UnknownNameError, match="choose one of: hf, litellm, scripted"):
        create_policy("gpt")


def test_create_checks_options() -> None:
    policy = create_policy("scripted", actions=["look"])
    assert isinstance(policy, ScriptedPolicy) and isinstance(policy, Policy)
    with pytest.raises(ConfigError, match=r"'scripted'.*unexpected keyword"):
        create_policy("scripted", actions=["look"], colour="red")


def test_api_model_config_builds_limits_retries_and_cache() -> None:
    config = PolicyConfig(
        backend="litellm",
        model="hosted_vllm/bc",
        api_base="http://127.0.0.1:9/v1, http://127.0.0.1:10/v1",
        rpm=100,
        max_concurrency=5,
        retries=2,
        timeout_s=7,
    )
    policy = build_policy(config, cache=InMemoryCallCache())
    assert stack(policy) == [
        CachedPolicy,
        RetryingPolicy,
        ConcurrencyLimitedPolicy,
        RateLimitedPolicy,
        LiteLLMPolicy,
    ]
    backend = policy.inner.inner.inner.inner  # type: ignore[attr-defined]
    assert backend.api_bases == ["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"]
    assert backend.timeout_s == 7 and backend._router is not None
    assert policy.model_name == "hosted_vllm/bc"


def test_cache_off_and_no_limits() -> None:
    config = PolicyConfig(backend="litellm", model="openai/gpt-4o", cache=False, retries=0)
    assert stack(build_policy(config, cache=InMemoryCallCache())) == [
        ConcurrencyLimitedPolicy,
        LiteLLMPolicy,
    ]


def test_api_key_env_comes_from_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QLASS_TEST_KEY", raising=False)
    config = PolicyConfig(backend="litellm", model="openai/gpt-4o", api_key_env="QLASS_TEST_KEY")
    with pytest.raises(ConfigError, match="QLASS_TEST_KEY is not set"):
        build_policy(config)


def test_local_model_gets_no_network_wrappers(tiny_model_dir: Path) -> None:
    config = PolicyConfig(backend="hf", model=str(tiny_model_dir), device="cpu", max_batch=4)
    policy = build_policy(config, cache=InMemoryCallCache())
    assert stack(policy) == [CachedPolicy, HFPolicy]


def test_model_must_be_set() -> None:
    with pytest.raises(ConfigError, match=r"policy\.model must be set for backend 'litellm'"):
        build_policy(PolicyConfig(backend="litellm"))


def test_scripted_from_config() -> None:
    policy = build_policy(PolicyConfig(backend="scripted", model="look around | move north"))
    assert isinstance(policy, ScriptedPolicy)


def test_missing_torch_is_a_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "qlass.backends.hf")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'qlass\[local\]'"):
        create_policy("hf", "some/dir")
