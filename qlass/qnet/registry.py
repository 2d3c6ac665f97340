"""Build a value model by name, importing only what that kind needs.

kind          class                                         options
qnet          qlass.qnet.scorer.QNetScorer.from_pretrained  directory, device, dtype,
                                                            max_batch, token_budget, ...
qnet-server   qlass.qnet.client.QNetClient                  url, timeout_s, retries, ...
constant      qlass.qnet.constant.ConstantValueModel        value
random        qlass.qnet.constant.RandomValueModel          seed
judge         qlass.qnet.judge.LLMJudgeValueModel           model, api_base, fallback, ...
"""

from __future__ import annotations

import importlib
from typing import Any

from qlass.errors import ConfigError, UnknownNameError
from qlass.qnet.base import ValueModel

__all__ = ["VALUE_MODELS", "create_value_model"]

VALUE_MODELS: dict[str, str] = {
    "qnet": "qlass.qnet.scorer:QNetScorer.from_pretrained",
    "qnet-server": "qlass.qnet.client:QNetClient",
    "constant": "qlass.qnet.constant:ConstantValueModel",
    "random": "qlass.qnet.constant:RandomValueModel",
    "judge": "qlass.qnet.judge:LLMJudgeValueModel",
}


def create_value_model(kind: str, **options: Any) -> ValueModel:
    """Create the value model registered as ``kind`` with ``options`` as keyword arguments.

    Raises:
        UnknownNameError: ``kind`` is not registered (the message lists the kinds).
        ConfigError: an option is missing or not accepted by that kind.
    """
    try:
        target = VALUE_MODELS[kind]
    except KeyError:
        choices = ", ".join(sorted(VALUE_MODELS))
        raise UnknownNameError(f"unknown value model {kind!r}; choose one of: {choices}") from None
    module_name, _, attr_path = target.partition(":")
    factory: Any = importlib.import_module(module_name)
    for attr in attr_path.split("."):
        factory = getattr(factory, attr)
    try:
        model = factory(**options)
    except TypeError as exc:
        raise ConfigError(f"value model {kind!r}: bad options {sorted(options)}: {exc}") from exc
    assert isinstance(model, ValueModel)
    return model
