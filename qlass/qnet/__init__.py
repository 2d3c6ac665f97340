"""Value models: the QNet (model, training, batched scorer, HTTP server and client) and others.

Importing this package is cheap: the torch/transformers parts load on first access.

    ValueModel, ValueQuery      the protocol (qlass.qnet.base)
    create_value_model          build one by name: qnet, qnet-server, constant, random, judge
    QNet                        backbone + value head (qlass.qnet.model)
    QNetScorer                  batched, cached in-process scorer (qlass.qnet.scorer)
    QNetClient                  scorer over HTTP (qlass.qnet.client)
    train_qnet, TrainSettings   training with the transformers Trainer (qlass.qnet.train)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from qlass.qnet.base import BaseValueModel, ValueModel, ValueQuery
from qlass.qnet.registry import create_value_model

if TYPE_CHECKING:
    from qlass.qnet.client import QNetClient
    from qlass.qnet.constant import ConstantValueModel, RandomValueModel
    from qlass.qnet.judge import LLMJudgeValueModel
    from qlass.qnet.model import QNet
    from qlass.qnet.scorer import QNetScorer
    from qlass.qnet.train import TrainResult, TrainSettings, train_qnet

__all__ = [
    "BaseValueModel",
    "ConstantValueModel",
    "LLMJudgeValueModel",
    "QNet",
    "QNetClient",
    "QNetScorer",
    "RandomValueModel",
    "TrainResult",
    "TrainSettings",
    "ValueModel",
    "ValueQuery",
    "create_value_model",
    "train_qnet",
]

_LAZY = {
    "ConstantValueModel": "qlass.qnet.constant",
    "RandomValueModel": "qlass.qnet.constant",
    "LLMJudgeValueModel": "qlass.qnet.judge",
    "QNet": "qlass.qnet.model",
    "QNetClient": "qlass.qnet.client",
    "QNetScorer": "qlass.qnet.scorer",
    "TrainResult": "qlass.qnet.train",
    "TrainSettings": "qlass.qnet.train",
    "train_qnet": "qlass.qnet.train",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qlass.qnet' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
