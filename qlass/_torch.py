"""Device choice shared by the local policy (:mod:`qlass.backends.hf`) and the QNet scorer.

Imports torch: import this module only where torch is needed anyway.
"""

from __future__ import annotations

from importlib.metadata import version

import torch
from packaging.version import Version

__all__ = ["default_dtype", "dtype_argument", "resolve_device"]


def resolve_device(
    device: str, *, error: type[Exception] = ValueError, field: str = "device"
) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; ``"cpu"``/``"cuda[:n]"`` are taken as is.

    A name torch does not know, or CUDA on a machine without it, raises ``error`` with a
    message that names ``field`` (the config field or argument the value came from).
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise error(f"{field}: {device!r} is not a torch device") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise error(f"{field}: CUDA was asked for but no CUDA GPU is available")
    return resolved


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (the paper's setting), fp32 on CPU (bf16 matmuls are slow there)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def dtype_argument(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``from_pretrained``'s dtype keyword: transformers 4.56 renamed ``torch_dtype`` to
    ``dtype``."""
    name = "dtype" if Version(version("transformers")) >= Version("4.56") else "torch_dtype"
    return {name: dtype}
