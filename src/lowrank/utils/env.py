"""Versions, threads and devices: what a bug report needs."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

import torch

from ..errors import ConfigError


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """Versions of Python and the key packages, torch threads and visible devices."""
    return {
        "lowrank": _version("lowrank"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "safetensors": _version("safetensors"),
        "numpy": _version("numpy"),
        "threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | None) -> str:
    """``device`` checked against this machine (``None``: cuda when available, else cpu).

    Raises :class:`~lowrank.errors.ConfigError` for a string torch does not parse, a device
    type lowrank does not run on, or an accelerator this machine lacks.
    """
    if device is None:
        return default_device()
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device '{device}' is not a device: expected cpu, cuda, cuda:N or "
                          "mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no visible GPU"
            raise ConfigError(f"device '{device}': CUDA is not available here (torch "
                              f"{torch.__version__}, {build}): use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{device}': this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s), numbered from 0")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device '{device}': MPS is not available here: use --device cpu")
    elif parsed.type != "cpu":
        raise ConfigError(f"device '{device}' is not supported: expected cpu, cuda, cuda:N or "
                          "mps")
    return str(parsed)
