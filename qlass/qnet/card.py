"""The files that make a QNet checkpoint a transformers model folder and say what it is:
``config.json`` (with ``auto_map``), ``modeling_qlass_qnet.py`` and the model card
``README.md``. See :mod:`qlass.qnet.modeling_qlass_qnet` for why ``auto_map``."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, StrictUndefined

from qlass.qnet import modeling_qlass_qnet
from qlass.qnet.modeling_qlass_qnet import QlassQNetConfig

__all__ = ["CARD_FILE", "MODELING_FILE", "model_card", "write_transformers_files"]

MODELING_FILE = "modeling_qlass_qnet.py"
CARD_FILE = "README.md"

_CARD = """\
---
library_name: transformers
tags: [qlass, value-model, q-network, agents]
{%- if base_model %}
base_model: {{ base_model }}
{%- endif %}
---

# QLASS QNet

A value model (a Q-network) for Q-guided stepwise search of language agents (QLASS,
ICML 2025), trained with qlass {{ qlass_version }}: a
transformers backbone with an MLP value head
(Linear({{ hidden_size }}, {{ head_dim }}) -> ReLU -> Linear -> ReLU -> Linear(1)) read at the
last token. It scores a candidate action in its context; higher is better.

- **Base model:** {{ base_model or "(unrecorded)" }}{% if lora %}; the backbone is a
  LoRA adapter on it (`backbone/adapter_config.json`; loading needs `peft` and that folder){% endif %}
- **Training data:** Q-labelled (history, candidate) pairs from exploration trees, Bellman
  Q labels, per-tree min-max normalised (the paper's recipe); MSE on the value.
- **Input:** at most {{ max_length }} tokens{% if max_turns is not none %}, the last
  {{ max_turns }} turns of history{% endif %}.

## Metrics

{% if metrics -%}
| metric | value |
|---|---|
{% for name, value in metrics.items() -%}
| {{ name }} | {{ value }} |
{% endfor %}
{%- else -%}
No training metrics were recorded with this checkpoint.
{%- endif %}

## Loading

With qlass: `QNetScorer.from_pretrained(folder)`, or `value_model = "<folder>"` in a run
config. With transformers alone (torch + transformers{% if lora %} + peft{% endif %}):

```python
from transformers import AutoModel, AutoTokenizer

qnet = AutoModel.from_pretrained(folder, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
messages = [
    {"role": "user", "content": task_and_first_observation},
    # ... earlier turns: {"role": "assistant", ...}, {"role": "user", observation}
    {"role": "assistant", "content": candidate_action},
]
text = tokenizer.apply_chat_template(messages, tokenize=False)
batch = tokenizer([text], add_special_tokens=False, return_tensors="pt")
value = qnet(**batch).value  # one float per sequence
```

Pad on the right (the value is read at the last real token); cut long inputs from the left
to the last {{ max_length }} tokens.
"""

_METRICS = (
    "train_examples",
    "dev_examples",
    "train_tasks",
    "dev_tasks",
    "steps",
    "dev_mse_before",
    "dev_mse",
    "dev_mse_mean_baseline",
    "dev_spearman",
    "dev_sibling_accuracy",
    "dev_sibling_spread",
)


def model_card(spec: Mapping[str, Any], *, hidden_size: int, lora: bool, metrics: Any) -> str:
    """The README.md of a checkpoint; ``spec`` is its ``qnet_config.json`` content."""
    shown = {
        name: round(value, 4) if isinstance(value, float) else value
        for name in _METRICS
        if (value := (metrics or {}).get(name)) is not None
    }
    template = Environment(autoescape=False, undefined=StrictUndefined).from_string(_CARD)
    return template.render(
        base_model=spec.get("base_model"),
        qlass_version=spec.get("qlass_version"),
        head_dim=spec["head_dim"],
        hidden_size=hidden_size,
        max_length=spec["max_length"],
        max_turns=spec.get("max_turns"),
        lora=lora,
        metrics=shown,
    )


def write_transformers_files(
    directory: Path,
    spec: Mapping[str, Any],
    *,
    hidden_size: int,
    lora: bool,
    metrics: Mapping[str, Any] | None,
) -> None:
    """Write ``config.json``, ``modeling_qlass_qnet.py`` and ``README.md`` into a
    checkpoint folder whose weights are already there."""
    config = QlassQNetConfig(
        hidden_size=hidden_size,
        head_dim=spec["head_dim"],
        max_input_tokens=spec["max_length"],
        max_turns=spec.get("max_turns"),
        base_model=spec.get("base_model"),
        architectures=["QlassQNetModel"],
        auto_map={
            "AutoConfig": f"{MODELING_FILE[:-3]}.QlassQNetConfig",
            "AutoModel": f"{MODELING_FILE[:-3]}.QlassQNetModel",
        },
    )
    config.save_pretrained(str(directory))
    shutil.copyfile(modeling_qlass_qnet.__file__, directory / MODELING_FILE)
    (directory / CARD_FILE).write_text(
        model_card(spec, hidden_size=hidden_size, lora=lora, metrics=metrics)
    )
