"""LoRA adapters (peft) for the two trainers and the two model loaders.

peft is optional (``qlass[peft]``) and imported only where an adapter is made or loaded, so
that the local backend and the QNet stay importable with torch and transformers alone.

An adapter folder is PEFT's own layout, which vLLM serves with ``--enable-lora`` and
``peft.PeftModel.from_pretrained`` loads::

    adapter_config.json         rank, alpha, target modules; base_model_name_or_path
    adapter_model.safetensors   the LoRA weights only

``base_model_name_or_path`` names the base model folder, which has to stay where it is (or
be edited there) for the adapter to load.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from qlass.errors import ConfigError, MissingDataError, MissingDependencyError

__all__ = [
    "ADAPTER_CONFIG",
    "LoraSettings",
    "adapter_base",
    "adapter_task",
    "add_lora",
    "clear_other_kind",
    "import_peft",
    "is_adapter_dir",
    "load_adapted",
    "load_model",
    "lora_settings_of",
]

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True, slots=True)
class LoraSettings:
    """A LoRA adapter's shape. ``target_modules=None`` adapts every linear layer of the
    transformer blocks (peft's ``"all-linear"``; the output layer is left out)."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None


def lora_settings_of(section: Any) -> LoraSettings | None:
    """The adapter a config section's ``lora`` asks for (``bc``/``qnet``); None at rank 0."""
    lora = section.lora
    if not lora.rank:
        return None
    return LoraSettings(lora.rank, lora.alpha, lora.dropout, lora.target_modules)


def import_peft() -> ModuleType:
    """The peft module, or a one-line "install qlass[peft]" error."""
    try:
        import peft
    except ImportError as exc:
        raise MissingDependencyError("peft", "peft", "LoRA adapters") from exc
    return peft


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft (0.21) still reads transformers' deprecated ``is_gradient_checkpointing``, whose
    FutureWarning says nothing a qlass user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning
        )
        yield


def is_adapter_dir(directory: str | Path) -> bool:
    """True if ``directory`` holds a PEFT adapter (``adapter_config.json``)."""
    return (Path(directory) / ADAPTER_CONFIG).is_file()


def _adapter_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / ADAPTER_CONFIG
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MissingDataError(f"{path} is not a readable adapter config: {exc}") from exc
    if not isinstance(data, dict):
        raise MissingDataError(f"{path} is not a readable adapter config")
    return data


def adapter_task(directory: str | Path) -> str | None:
    """The adapter's peft task type (``CAUSAL_LM`` for a policy, ...), if recorded."""
    task = _adapter_config(directory).get("task_type")
    return task if isinstance(task, str) else None


def adapter_base(directory: str | Path) -> Path:
    """The base model folder an adapter was trained on (its ``base_model_name_or_path``)."""
    base = _adapter_config(directory).get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise MissingDataError(
            f"{Path(directory) / ADAPTER_CONFIG} names no base model (base_model_name_or_path)"
        )
    resolved = Path(base).expanduser()
    if not resolved.is_absolute():
        resolved = (Path(directory) / resolved).resolve()
    if not resolved.is_dir():
        raise MissingDataError(
            f"the adapter in {directory} needs its base model at {base}, which is not a folder "
            f"(set base_model_name_or_path in {ADAPTER_CONFIG})"
        )
    return resolved


def add_lora(model: Any, settings: LoraSettings, *, task_type: str, base_path: str | Path) -> Any:
    """Wrap ``model`` in a fresh LoRA adapter (only the adapter's weights train).

    ``task_type`` is peft's (``"CAUSAL_LM"`` for a policy, ``"FEATURE_EXTRACTION"`` for a
    QNet backbone); ``base_path`` is recorded as the adapter's base model folder.
    """
    peft = import_peft()
    if settings.rank < 1:
        raise ConfigError(f"lora.rank must be at least 1, not {settings.rank}")
    config = peft.LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules) if settings.target_modules else "all-linear",
        task_type=task_type,
    )
    try:
        with _quiet_peft():
            wrapped = peft.get_peft_model(model, config)
    except ValueError as exc:  # e.g. a target module the model does not have
        raise ConfigError(f"lora: {str(exc).splitlines()[0]}") from exc
    # get_peft_model takes the base path from the model (and warns when the config named
    # another); the adapter's base is the folder the model came from: for a model loaded from
    # a BC adapter folder (merged), that folder, not the folder under it.
    wrapped.peft_config["default"].base_model_name_or_path = str(Path(base_path).resolve())
    return wrapped


def load_adapted(
    directory: str | Path,
    load_base: Callable[[Path], Any],
    *,
    merge: bool,
    trainable: bool = False,
) -> Any:
    """The model an adapter folder describes: ``load_base`` on its base folder, then the
    adapter on top; ``merge`` folds the adapter into the weights (faster inference, the
    same outputs up to float rounding), else the ``PeftModel`` is returned."""
    peft = import_peft()
    base = load_base(adapter_base(directory))
    try:
        with _quiet_peft():
            model = peft.PeftModel.from_pretrained(base, str(directory), is_trainable=trainable)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MissingDataError(f"cannot load the adapter in {directory}: {reason}") from exc
    return model.merge_and_unload() if merge else model


def load_model(auto_class: Any, directory: str | Path, **kwargs: Any) -> Any:
    """``auto_class.from_pretrained(directory, **kwargs)``; for an adapter folder, its base
    loaded the same way (an adapter's base may be an adapter folder itself: a later
    self-training round) with the adapter merged in."""
    if is_adapter_dir(directory):
        return load_adapted(
            directory, lambda base: load_model(auto_class, base, **kwargs), merge=True
        )
    return auto_class.from_pretrained(str(directory), **kwargs)


def clear_other_kind(directory: str | Path, *, adapter: bool) -> None:
    """Before saving an adapter (``adapter``) or a whole model into ``directory``, remove
    what an earlier save of the other kind left there: a loader finding both would be
    misled."""
    directory = Path(directory)
    stale = (
        ["config.json", "generation_config.json", *(p.name for p in directory.glob("model*"))]
        if adapter
        else [ADAPTER_CONFIG, "adapter_model.safetensors", "adapter_model.bin"]
    )
    for name in stale:
        (directory / name).unlink(missing_ok=True)
