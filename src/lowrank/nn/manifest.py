"""Manifest fields: a structured layer's constructor arguments as JSON in ``lowrank.json``.

A layer declares its fields once (``manifest_fields``, a tuple of :class:`Field`); each field
names both a constructor keyword and the layer attribute holding its value, writes that value
as JSON and reads it back from an entry, raising ``ValueError`` that names the field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}


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


def pair_entry(entry: dict[str, Any], key: str, zero: bool = False) -> tuple[int, int]:
    value = entry.get(key)
    ok = isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and (v >= 0 if zero else v > 0)
        for v in value)
    if not ok:
        raise ValueError(f"'{key}' must be a list of two {'non-negative' if zero else 'positive'}"
                         f" integers, got {value!r}")
    return value[0], value[1]


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Field:
    """One constructor argument: ``read(entry, name)`` parses it, ``write`` makes it JSON."""

    name: str
    read: Callable[[dict[str, Any], str], Any]
    write: Callable[[Any], Any] = _same

    def encode(self, layer: object) -> Any:
        return self.write(getattr(layer, self.name))

    def decode(self, entry: dict[str, Any]) -> Any:
        return self.read(entry, self.name)


def positive(name: str) -> Field:
    """A required positive integer."""
    return Field(name, positive_int)


def optional(name: str, default: Any, kind: Callable[[Any], Any]) -> Field:
    """A value converted by ``kind``, ``default`` when the entry lacks it."""
    return Field(name, lambda entry, key: kind(entry.get(key, default)))


def pair(name: str, zero: bool = False) -> Field:
    """A pair of positive (``zero``: non-negative) integers, stored as a list."""
    return Field(name, partial(pair_entry, zero=zero), list)


def choice(name: str, options: tuple[int, ...]) -> Field:
    """A required integer among ``options``."""
    def read(entry: dict[str, Any], key: str) -> int:
        value = entry.get(key)
        if isinstance(value, bool) or value not in options:
            raise ValueError(f"'{key}' must be one of {options}, got {value!r}")
        return value
    return Field(name, read)


def optional_int(name: str) -> Field:
    """An integer or ``None`` (JSON null)."""
    def read(entry: dict[str, Any], key: str) -> int | None:
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"'{key}' must be an integer or null, got {value!r}")
        return value
    return Field(name, read)


BIAS = Field("bias", lambda entry, key: bool(entry.get(key, True)), lambda b: b is not None)
"""Whether the layer has a bias (its ``bias`` attribute is not ``None``); default true."""
DTYPE = Field("dtype", lambda entry, key: parse_dtype(entry.get(key, "float32")), dtype_name)
"""The layer's floating dtype (:attr:`StructuredLayer.dtype`); default float32."""
