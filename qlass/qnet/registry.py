"""Build a value model by name, importing only what that kind needs.

kind          class                                         options
qnet          qlass.qnet.scorer.QNetScorer.from_pretrained  directory, device, dtype,
                                                            max_batch, token_budget, ...
qnet-server   qlass.qnet.client.QNetClient                  url, timeout_s, retries,
                                                            backoff_s, max_concurrency, ...
constant      qlass.qnet.constant.ConstantValueModel        value
random        qlass.qnet.constant.RandomValueModel          seed
judge         qlass.qnet.judge.LLMJudgeValueModel           model, api_base, fallback, ...

A *remote* kind is reached over the network: :func:`create_value_model` wraps it with
:class:`~qlass.qnet.wrappers.RetryingValueModel` (``retries``, default 3, first wait
``backoff_s``, default 0.5 s, doubled each time) and, given ``max_concurrency``, a
:class:`~qlass.qnet.wrappers.ConcurrencyLimitedValueModel`. The judge asks its LLM through
a policy stack, which retries and limits each request itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qlass._registry import Registry, load_object
from qlass.errors import ConfigError
from qlass.qnet.base import ValueModel
from qlass.qnet.wrappers import Backoff, ConcurrencyLimitedValueModel, RetryingValueModel

__all__ = ["VALUE_MODELS", "ValueModelSpec", "create_value_model"]


@dataclass(frozen=True, slots=True)
class ValueModelSpec:
    """How to make a value model: its class or factory (``"module:attr"``, imported on
    use) and whether it is remote (retried and limited by the wrappers)."""

    target: str
    description: str
    remote: bool = False


VALUE_MODELS: Registry[ValueModelSpec] = Registry(
    "value model",
    {
        "qnet": ValueModelSpec(
            "qlass.qnet.scorer:QNetScorer.from_pretrained", "a QNet checkpoint, in process"
        ),
        "qnet-server": ValueModelSpec(
            "qlass.qnet.client:QNetClient", "a qlass serve-qnet server", remote=True
        ),
        "constant": ValueModelSpec(
            "qlass.qnet.constant:ConstantValueModel", "every candidate scores the same"
        ),
        "random": ValueModelSpec("qlass.qnet.constant:RandomValueModel", "a seeded random score"),
        "judge": ValueModelSpec("qlass.qnet.judge:LLMJudgeValueModel", "an LLM rates 0..10"),
    },
)


def create_value_model(kind: str, **options: Any) -> ValueModel:
    """Create the value model registered as ``kind`` with ``options`` as keyword arguments
    (for a remote kind, ``retries``, ``backoff_s`` and ``max_concurrency`` configure its
    wrappers).

    Raises:
        UnknownNameError: ``kind`` is not registered (the message lists the kinds).
        ConfigError: an option is missing or not accepted by that kind.
    """
    spec = VALUE_MODELS[kind]
    retries = options.pop("retries", 3) if spec.remote else 0
    backoff_s = options.pop("backoff_s", 0.5) if spec.remote else 0.0
    max_concurrency = options.pop("max_concurrency", None) if spec.remote else None
    factory = load_object(spec.target, f"value model {kind!r} ({spec.description})")
    try:
        model = factory(**options)
    except TypeError as exc:
        raise ConfigError(f"value model {kind!r}: bad options {sorted(options)}: {exc}") from exc
    assert isinstance(model, ValueModel)
    if max_concurrency is not None:
        model = ConcurrencyLimitedValueModel(model, max_concurrency)
    if retries:
        model = RetryingValueModel(model, Backoff(retries, initial_wait_s=backoff_s, jitter_s=0.0))
    return model
