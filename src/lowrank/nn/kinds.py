"""The structured-layer kinds that the ``lowrank`` checkpoint can rebuild from its manifest.

A serialisable layer is a :class:`~lowrank.nn.protocol.StructuredLayer` whose constructor
arguments are its ``manifest_fields``, registered with :func:`register_module_kind` under its
class name: its entry in ``lowrank.json`` is ``{"kind": <class name>, **manifest_entry()}``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .protocol import StructuredLayer

_KINDS: dict[str, type[StructuredLayer]] = {}


def register_module_kind(cls: type[StructuredLayer]) -> type[StructuredLayer]:
    """Class decorator: make ``cls`` a checkpoint kind (refuses a second class of one name)."""
    if not issubclass(cls, StructuredLayer):
        raise TypeError(f"{cls.__name__} is not a StructuredLayer")
    if _KINDS.setdefault(cls.__name__, cls) is not cls:
        raise ValueError(f"a module kind named {cls.__name__!r} is already registered")
    return cls


def module_kind(name: str) -> type[StructuredLayer] | None:
    return _KINDS.get(name)


def module_kinds() -> tuple[type[StructuredLayer], ...]:
    """Every registered kind, in registration order."""
    return tuple(_KINDS.values())


def is_serialisable(module: nn.Module) -> bool:
    return _KINDS.get(type(module).__name__) is type(module)


def entry_of(module: StructuredLayer) -> dict[str, Any]:
    return {"kind": type(module).__name__, **module.manifest_entry()}
