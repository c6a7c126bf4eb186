"""Versions, threads and devices: what a bug report needs."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

import torch


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
