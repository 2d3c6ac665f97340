"""What a run's numbers depend on beyond its config and seed, recorded with every stage.

Two runs of the same config and seed on the same machine give the same expert data, trees,
labels, checkpoints and evaluation episodes (``tests/runtime/test_reproducible.py`` checks
it). What can still change the float results, and so occasionally a sampled token, a QNet
arg-max or a whole tree below it, is recorded here for each stage:

- the library versions (torch, transformers, tokenizers, numpy, the simulators);
- the machine (platform, processor, cores) and the torch thread counts: CPU kernels split
  reductions between threads, so another thread count or another CPU can round
  differently;
- whether torch's deterministic algorithms were on (qlass's trainers turn them on while
  they train; the trainers record their own setting with their results), and, on CUDA,
  the cuBLAS workspace setting deterministic GEMMs need.

Light: torch is not imported here; its settings are read only when it is already loaded.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

__all__ = ["PACKAGES", "reproducibility_record", "torch_settings"]

PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "numpy",
    "textworld_express",
    "scienceworld",
)
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def torch_settings() -> dict[str, Any] | None:
    """torch's thread counts, deterministic-algorithm flags and CUDA device, if torch is
    loaded in this process (``None`` if not: nothing of this stage ran on torch)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    settings: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    if settings["cuda"]:
        settings["cuda_device"] = torch.cuda.get_device_name()
        settings["cudnn_deterministic"] = bool(torch.backends.cudnn.deterministic)
    return settings


def reproducibility_record() -> dict[str, Any]:
    """The versions, machine and torch settings a stage ran with (JSON-ready)."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "packages": {name: _version(name) for name in PACKAGES},
        "environment": {name: os.environ[name] for name in _THREAD_VARIABLES if name in os.environ},
        "torch": torch_settings(),
    }
