"""Pieces shared by the two trainers (BC in :mod:`qlass.runtime.bc`, the QNet in
:mod:`qlass.qnet.train`). Imports transformers: import it only where training happens."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from transformers import TrainerCallback, TrainingArguments, set_seed

from qlass._log import adopt_library_logging
from qlass._reproducibility import torch_settings

__all__ = ["StopCallback", "checkpointing_arguments", "reproducible_training", "resolve_bf16"]

# cuBLAS picks its GEMM algorithms deterministically only with a fixed workspace; the
# setting must be in place before the first cuBLAS call of the process.
_CUBLAS_WORKSPACE = ":4096:8"

# transformers attached its own log handler on import: hand its records to qlass's.
adopt_library_logging()


class StopCallback(TrainerCallback):
    """Ends training after the current optimizer step once ``should_stop()`` is true.

    Training runs in a worker thread, where the event loop's Ctrl-C handling cannot reach
    it; this is how a graceful stop gets there. The caller checks :attr:`stopped` after
    ``Trainer.train`` returns and discards the unfinished model.
    """

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop
        self.stopped = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.should_stop():
            self.stopped = True
            control.should_training_stop = True


@contextlib.contextmanager
def reproducible_training(seed: int) -> Iterator[dict[str, Any]]:
    """Seed Python, numpy and torch, and turn on torch's deterministic algorithms (and
    cuDNN's) for the duration; the previous flags come back afterwards.

    Deterministic algorithms are asked for with ``warn_only``: an op without a
    deterministic implementation warns instead of failing the run. On CUDA the cuBLAS
    workspace setting is put in place unless the user set one or CUDA already started.
    Yields the torch settings in effect (:func:`~qlass._reproducibility.torch_settings`),
    which the trainer records with its result.
    """
    if torch.cuda.is_available() and not torch.cuda.is_initialized():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_WORKSPACE)
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    set_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        settings = torch_settings()
        assert settings is not None
        if settings["cuda"]:
            settings["cublas_workspace"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        yield settings
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2:]


def checkpointing_arguments(enabled: bool) -> dict[str, Any]:
    """``TrainingArguments`` for gradient (activation) checkpointing under either name
    (transformers 5 renamed it). Non-reentrant checkpointing, which needs no gradient on the
    inputs: with a LoRA adapter the embeddings are frozen and would give none."""
    fields = TrainingArguments.__dataclass_fields__
    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else ("gradient_checkpointing")
    )
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def resolve_bf16(bf16: bool | None, *, use_cpu: bool = False) -> bool:
    """bf16 mixed precision as asked, or (``None``) exactly on a bf16-capable GPU."""
    if bf16 is not None:
        return bf16
    return not use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
