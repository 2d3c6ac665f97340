"""The QNet: a transformers backbone with an MLP value head read at the last token.

``value = head(h_last)`` where ``h_last`` is the backbone's last-layer hidden state at the
last real (non-pad) token and the head is ``Linear(h, d) -> ReLU -> Linear(d, d) -> ReLU ->
Linear(d, 1)`` (``d = head_dim``, 1024 in the paper). The head always runs in float32, also
when the backbone runs in bf16 on a GPU.

A checkpoint is a self-contained directory that can be copied between machines::

    qnet_config.json         head_dim, max_length, base model, qlass version, format version
    backbone/                the backbone (``save_pretrained``: config.json + safetensors),
                             or with ``qnet.lora`` a LoRA adapter in PEFT's layout on the
                             folder the QNet was trained from (which must stay there)
    value_head.safetensors   the head's weights
    tokenizer.json ...       the tokenizer, chat template included
    config.json              the same as a transformers config, naming ...
    modeling_qlass_qnet.py   ... the model class (:mod:`qlass.qnet.modeling_qlass_qnet`),
                             so that ``AutoModel.from_pretrained(folder,
                             trust_remote_code=True)`` loads it without qlass
    README.md                the model card: base model, training data, metrics, loading

Checkpoints written before ``config.json`` existed load in qlass as before.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import structlog
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel

from qlass._log import adopt_library_logging
from qlass._lora import (
    LoraSettings,
    add_lora,
    clear_other_kind,
    import_peft,
    is_adapter_dir,
    load_adapted,
)
from qlass._version import __version__, code_version
from qlass.errors import MissingDataError, ValueModelError
from qlass.qnet.card import write_transformers_files
from qlass.qnet.modeling_qlass_qnet import (
    BACKBONE_DIR,
    HEAD_FILE,
    MODEL_TYPE,
    QlassQNetConfig,
    QlassQNetModel,
    QNetOutput,
    ValueHead,
    is_right_padded,
    last_token_index,
    load_backbone,
    value_output,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "QNet",
    "QNetOutput",
    "QNetSpec",
    "ValueHead",
    "is_right_padded",
    "last_token_index",
    "load_tokenizer",
]

log = structlog.get_logger(__name__)

# transformers attached its own log handler on import: hand its records to qlass's.
adopt_library_logging()
# Inside qlass a checkpoint's config.json resolves to these classes with no remote code.
AutoConfig.register(MODEL_TYPE, QlassQNetConfig, exist_ok=True)
AutoModel.register(QlassQNetConfig, QlassQNetModel, exist_ok=True)

CHECKPOINT_FORMAT = 1
CONFIG_FILE = "qnet_config.json"


@dataclass(frozen=True, slots=True)
class QNetSpec:
    """What ``qnet_config.json`` records besides the weights."""

    head_dim: int
    max_length: int
    base_model: str | None = None
    max_turns: int | None = None
    qlass_version: str = __version__
    format: int = CHECKPOINT_FORMAT


def _hidden_size(config: Any) -> int:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text_config, "hidden_size", None) or getattr(text_config, "n_embd", None)
    if not isinstance(size, int):
        raise ValueModelError(f"cannot tell the hidden size of a {type(config).__name__}")
    return size


def _max_positions(config: Any) -> int | None:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text_config, "max_position_embeddings", None) or getattr(
        text_config, "n_positions", None
    )
    return value if isinstance(value, int) else None


def load_tokenizer(directory: Path) -> Any:
    """Load the tokenizer saved in a model or QNet checkpoint directory."""
    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise MissingDataError(f"no usable tokenizer in {directory}: {exc}") from exc


class QNet(nn.Module):
    """Backbone + value head. ``forward`` returns :class:`QNetOutput` (Trainer-compatible)."""

    main_input_name = "input_ids"
    # The loss is a per-batch mean; the Trainer scales it for gradient accumulation.
    accepts_loss_kwargs = False

    def __init__(self, backbone: PreTrainedModel, spec: QNetSpec) -> None:
        super().__init__()
        self.backbone = backbone
        self.spec = spec
        self.head = ValueHead(_hidden_size(backbone.config), spec.head_dim)

    @property
    def config(self) -> Any:
        """The backbone's config (the Trainer reads a few fields from ``model.config``)."""
        return self.backbone.config

    @property
    def max_length(self) -> int:
        return self.spec.max_length

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> QNetOutput:
        return value_output(self.backbone, self.head, input_ids, attention_mask, labels)

    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        """Delegate to the backbone (called by the Trainer for ``activation_checkpointing``)."""
        if hasattr(self.backbone, "activation_checkpointing_enable"):
            self.backbone.activation_checkpointing_enable(**kwargs)
        else:  # transformers 4.x
            self.gradient_checkpointing_enable(kwargs.get("activation_checkpointing_kwargs"))

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, **_: Any
    ) -> None:
        """Delegate to the backbone (the transformers 4.x name of the hook above)."""
        self.backbone.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=gradient_checkpointing_kwargs
        )

    def with_lora(self, settings: LoraSettings, base_path: str | Path) -> QNet:
        """Put a fresh LoRA adapter on the backbone (only it and the head train then);
        ``base_path`` is the backbone's folder, recorded as the adapter's base."""
        self.backbone = add_lora(
            self.backbone, settings, task_type="FEATURE_EXTRACTION", base_path=base_path
        )
        return self

    # ---- construction ---------------------------------------------------------------------

    @classmethod
    def from_backbone(
        cls,
        model_dir: str | Path,
        *,
        head_dim: int = 1024,
        max_length: int = 4096,
        max_turns: int | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> QNet:
        """A new QNet: the backbone of a local checkpoint (e.g. the BC policy) + a fresh head.

        ``max_length`` is capped at the backbone's position limit where it has one;
        ``max_turns`` is the history window of its input (see :func:`~qlass.qnet.encoding.render`).
        """
        backbone = _load_backbone(Path(model_dir), dtype)
        limit = _max_positions(backbone.config)
        if limit is not None and max_length > limit:
            log.warning("max_length capped at the backbone's limit", asked=max_length, limit=limit)
            max_length = limit
        torch.manual_seed(seed)
        spec = QNetSpec(head_dim, max_length, base_model=str(model_dir), max_turns=max_turns)
        return cls(backbone, spec)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, dtype: torch.dtype = torch.float32, trainable: bool = False
    ) -> QNet:
        """Load a checkpoint written by :meth:`save_pretrained`. A LoRA backbone is merged
        into its base for scoring; with ``trainable`` it stays an adapter that trains on.

        Raises:
            MissingDataError: the directory is not a QNet checkpoint or a file is missing.
        """
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        try:
            raw = json.loads(config_path.read_text())
        except OSError as exc:
            raise MissingDataError(
                f"{directory} is not a QNet checkpoint (cannot read {CONFIG_FILE})"
            ) from exc
        except json.JSONDecodeError as exc:
            raise MissingDataError(f"{config_path} is not valid JSON: {exc}") from exc
        fields = set(QNetSpec.__dataclass_fields__)
        spec = QNetSpec(**{k: v for k, v in raw.items() if k in fields})
        if spec.format > CHECKPOINT_FORMAT:
            raise MissingDataError(
                f"{directory} has QNet checkpoint format {spec.format}; this qlass reads "
                f"format {CHECKPOINT_FORMAT} (upgrade qlass)"
            )
        backbone_dir = directory / BACKBONE_DIR
        if trainable and is_adapter_dir(backbone_dir):
            backbone = load_adapted(
                backbone_dir,
                lambda base: _load_backbone(base, dtype),
                merge=False,
                trainable=True,
            )
        else:
            backbone = _load_backbone(backbone_dir, dtype)
        qnet = cls(backbone, spec)
        head = directory / HEAD_FILE
        if not head.is_file():
            raise MissingDataError(f"{directory} lacks {HEAD_FILE}")
        try:
            qnet.head.load_state_dict(load_file(str(head)))
        except (OSError, SafetensorError, RuntimeError, ValueError) as exc:
            # A truncated or foreign file: safetensors cannot parse it, or its tensors do
            # not fit the head the config describes.
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MissingDataError(f"{head} is not a usable value head: {reason}") from exc
        return qnet

    def save_pretrained(
        self,
        directory: str | Path,
        *,
        tokenizer: Any = None,
        state_dict: dict[str, torch.Tensor] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> Path:
        """Write the checkpoint directory (see the module docstring) and return its path.

        ``state_dict`` lets a distributed trainer pass the full gathered weights (FSDP);
        ``metrics`` (training's) go into the model card. A LoRA backbone is saved as its
        adapter only.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = state_dict if state_dict is not None else self.state_dict()
        backbone_state = {
            k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")
        }
        head_state = {
            k[len("head.") :]: v.detach().to("cpu", torch.float32).contiguous()
            for k, v in state.items()
            if k.startswith("head.")
        }
        backbone_dir = directory / BACKBONE_DIR
        adapter = is_peft_model(self.backbone)
        clear_other_kind(backbone_dir, adapter=adapter)
        # LoRA leaves the embeddings alone: no need for peft to look for a resized
        # vocabulary in the base folder (which has no config.json when it is a BC adapter).
        extra: dict[str, Any] = {"save_embedding_layers": False} if adapter else {}
        self.backbone.save_pretrained(str(backbone_dir), state_dict=backbone_state, **extra)
        save_file(head_state, str(directory / HEAD_FILE))
        spec = replace(self.spec, qlass_version=code_version())
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(spec), indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory))
        write_transformers_files(
            directory,
            asdict(spec),
            hidden_size=_hidden_size(self.backbone.config),
            lora=adapter,
            metrics=metrics,
        )
        return directory


def is_peft_model(model: Any) -> bool:
    """True for a backbone wrapped in a LoRA adapter (without importing peft)."""
    return hasattr(model, "peft_config")


def _load_backbone(directory: Path, dtype: torch.dtype) -> PreTrainedModel:
    if not (directory / "config.json").is_file() and not is_adapter_dir(directory):
        raise MissingDataError(f"no model at {directory} (config.json missing)")
    if is_adapter_dir(directory):
        import_peft()  # the "install qlass[peft]" error, not the standalone file's
    try:
        model = load_backbone(directory, dtype)
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MissingDataError(f"cannot load a backbone from {directory}: {reason}") from exc
    assert isinstance(model, PreTrainedModel)
    return model
