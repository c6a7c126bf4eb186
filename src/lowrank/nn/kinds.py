"""Module kinds that the ``lowrank`` checkpoint can rebuild from its manifest.

A serialisable module class defines ``manifest_entry(self) -> dict`` (JSON: shapes, ranks,
dtype; ``"kind"`` is added here) and ``from_manifest_entry(cls, entry) -> Module`` (an empty
module of that structure, whose tensors ``load`` then fills), and registers with
:func:`register_module_kind`. ``from_manifest_entry`` raises ``ValueError`` on bad fields.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_KINDS: dict[str, type[nn.Module]] = {}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}


def register_module_kind(cls: type[nn.Module]) -> type[nn.Module]:
    _KINDS[cls.__name__] = cls
    return cls


def module_kind(name: str) -> type[nn.Module] | None:
    return _KINDS.get(name)


def is_serialisable(module: nn.Module) -> bool:
    return type(module).__name__ in _KINDS and type(module) is _KINDS[type(module).__name__]


def entry_of(module: nn.Module) -> dict[str, Any]:
    return {"kind": type(module).__name__, **module.manifest_entry()}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: Any) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def positive_int(entry: dict[str, Any], key: str) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"'{key}' must be a positive integer, got {value!r}")
    return value
