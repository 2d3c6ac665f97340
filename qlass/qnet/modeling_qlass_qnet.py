"""A qlass QNet as a transformers model that loads without qlass.

This file is self-contained: it imports torch and transformers only (and peft, for a QNet
whose backbone is a LoRA adapter). qlass copies it into every QNet checkpoint, whose
``config.json`` names it in ``auto_map``, so that in a process without qlass::

    from transformers import AutoModel, AutoTokenizer
    qnet = AutoModel.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    value = qnet(**tokenizer(texts, add_special_tokens=False, padding=True,
                             return_tensors="pt")).value

gives the values qlass's scorer gives (the text is the chat template applied to the task,
the history and the candidate turn; see the checkpoint's README.md). qlass imports the
head, the forward pass and the backbone loader from here, so there is one copy of each.
Why ``auto_map`` and not only ``AutoModel.register``: a registration lives in the process
that imported the registering code (qlass), and this file is what a process without qlass
can load; qlass registers the classes too, so that inside qlass no remote code is needed.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

__all__ = [
    "BACKBONE_DIR",
    "HEAD_FILE",
    "MODEL_TYPE",
    "QNetOutput",
    "QlassQNetConfig",
    "QlassQNetModel",
    "ValueHead",
    "is_right_padded",
    "last_token_index",
    "load_backbone",
    "value_at_last_token",
    "value_output",
]

MODEL_TYPE = "qlass_qnet"
BACKBONE_DIR = "backbone"
HEAD_FILE = "value_head.safetensors"
_ADAPTER_CONFIG = "adapter_config.json"


class ValueHead(nn.Module):
    """``Linear(hidden, d) -> ReLU -> Linear(d, d) -> ReLU -> Linear(d, 1)``."""

    def __init__(self, hidden_size: int, head_dim: int = 1024) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden_size, head_dim),
            nn.ReLU(),
            nn.Linear(head_dim, head_dim),
            nn.ReLU(),
            nn.Linear(head_dim, 1),
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden).squeeze(-1)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row (right or left padding)."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.flip(1).to(torch.long).argmax(dim=1)


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """True if every row is ones followed by zeros (and starts with a real token)."""
    if attention_mask.shape[1] == 0 or not bool(attention_mask[:, 0].all()):
        return False
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


def value_at_last_token(
    backbone: nn.Module,
    head: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """The head (in float32) on the backbone's last hidden state at each row's last real
    token: one value per row."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    # With right padding, causal attention already keeps every real token from seeing the
    # pads (they come after it), so the backbone needs no padding mask: it then takes the
    # fused causal attention path instead of materialising a B x L x L mask.
    backbone_mask = None if is_right_padded(attention_mask) else attention_mask
    outputs = backbone(input_ids=input_ids, attention_mask=backbone_mask, use_cache=False)
    hidden = outputs.last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last = hidden[rows, last_token_index(attention_mask).to(hidden.device)]
    return head(last.float()).float()


def value_output(
    backbone: nn.Module,
    head: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor | None,
) -> QNetOutput:
    """The forward pass of a QNet: :func:`value_at_last_token`, and the MSE against
    ``labels`` when given (the paper's training loss)."""
    values = value_at_last_token(backbone, head, input_ids, attention_mask)
    loss = None
    if labels is not None:
        loss = nn.functional.mse_loss(values, labels.to(values.device, torch.float32))
    return QNetOutput(loss=loss, value=values)


def _dtype_argument(dtype: torch.dtype) -> dict[str, torch.dtype]:
    from importlib.metadata import version

    major, minor = (int(part) for part in version("transformers").split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}


def _adapter_base(directory: Path) -> tuple[Path, dict[str, Any]]:
    config = json.loads((directory / _ADAPTER_CONFIG).read_text())
    base = Path(config.get("base_model_name_or_path") or "")
    if not base.is_absolute():
        base = (directory / base).resolve()
    if not base.is_dir():
        raise OSError(f"the adapter in {directory} needs its base model at {base}")
    return base, config


def _merged(model: Any, adapter_dir: Path) -> Any:
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise ImportError(f"{adapter_dir} holds a LoRA adapter: install peft") from exc
    with warnings.catch_warnings():
        # peft (0.21) reads transformers' deprecated is_gradient_checkpointing: not ours.
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning
        )
        return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def _load_with_adapters(auto_class: Any, directory: Path, dtype: torch.dtype) -> Any:
    if not (directory / _ADAPTER_CONFIG).is_file():
        if not (directory / "config.json").is_file():
            raise OSError(f"no model at {directory} (config.json missing)")
        return auto_class.from_pretrained(str(directory), **_dtype_argument(dtype))
    base, _ = _adapter_base(directory)
    return _merged(_load_with_adapters(auto_class, base, dtype), directory)


def load_backbone(directory: str | Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The backbone saved in ``directory``: a model folder (``config.json``) or a LoRA
    adapter folder in PEFT's layout, whose base (``base_model_name_or_path``: a model
    folder or another adapter folder) is loaded with the adapter merged in. A policy's
    adapter (peft task ``CAUSAL_LM``) adapts the whole language model, whose decoder is
    then the backbone. Adapters need peft. ``OSError``: nothing loadable there."""
    directory = Path(directory)
    if not (directory / _ADAPTER_CONFIG).is_file():
        return _load_with_adapters(AutoModel, directory, dtype)
    base, config = _adapter_base(directory)
    if config.get("task_type") == "CAUSAL_LM":
        language_model = _load_with_adapters(AutoModelForCausalLM, directory, dtype)
        return language_model.base_model
    return _merged(load_backbone(base, dtype), directory)


class QlassQNetConfig(PretrainedConfig):
    """The QNet's shape: the backbone's ``hidden_size``, the head's width (``head_dim``)
    and the input the QNet was trained on (``max_input_tokens`` tokens, ``max_turns`` turns;
    not ``max_length``, which transformers reserves for generation)."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        hidden_size: int = 0,
        head_dim: int = 1024,
        max_input_tokens: int = 4096,
        max_turns: int | None = None,
        base_model: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.hidden_size = hidden_size
        self.head_dim = head_dim
        self.max_input_tokens = max_input_tokens
        self.max_turns = max_turns
        self.base_model = base_model
        super().__init__(**kwargs)


@dataclass
class QNetOutput(ModelOutput):
    """``value``: one float32 value per sequence; ``loss``: MSE to ``labels`` if given."""

    loss: torch.Tensor | None = None
    value: torch.Tensor | None = None


class QlassQNetModel(PreTrainedModel):
    """Backbone + value head, loaded from a qlass QNet checkpoint folder with
    :meth:`from_pretrained` (the backbone in ``backbone/``, the head in
    ``value_head.safetensors``)."""

    config_class = QlassQNetConfig
    main_input_name = "input_ids"

    def __init__(self, config: QlassQNetConfig, backbone: nn.Module | None = None) -> None:
        super().__init__(config)
        if backbone is None:
            raise ValueError("a QNet is loaded with from_pretrained(folder)")
        self.backbone = backbone
        self.head = ValueHead(config.hidden_size, config.head_dim)

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | Path,
        *args: Any,
        config: QlassQNetConfig | None = None,
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        **kwargs: Any,
    ) -> QlassQNetModel:
        """Load the checkpoint folder (local folders only). ``dtype``: the backbone's
        (float32 by default); the head is float32 always."""
        folder = Path(pretrained_model_name_or_path)
        if config is None:
            config = QlassQNetConfig.from_pretrained(str(folder))
        chosen = dtype if dtype is not None else torch_dtype
        if isinstance(chosen, str):
            chosen = torch.float32 if chosen == "auto" else getattr(torch, chosen)
        backbone = load_backbone(folder / BACKBONE_DIR, chosen or torch.float32)
        model = cls(config, backbone)
        model.head.load_state_dict(load_file(str(folder / HEAD_FILE)))
        return model.eval()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> QNetOutput:
        return value_output(self.backbone, self.head, input_ids, attention_mask, labels)
