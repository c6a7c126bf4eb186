"""Private registries: method name -> config class, allocator name -> function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")

_METHODS: dict[str, type] = {}
_ALLOCATORS: dict[str, Callable[..., Any]] = {}


def register_method(cls: type[T]) -> type[T]:
    """Class decorator: make a compression config reachable by its ``method`` name."""
    _METHODS[cls.method] = cls
    return cls


def register_allocator(name: str) -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        _ALLOCATORS[name] = fn
        return fn

    return deco


def _load_builtins() -> None:
    from . import alloc, compress  # noqa: F401  (registration side effects)


def method_names() -> list[str]:
    _load_builtins()
    return sorted(_METHODS)


def allocator_names() -> list[str]:
    _load_builtins()
    return sorted(_ALLOCATORS)


def get_method(name: str) -> type:
    _load_builtins()
    key = name.lower().replace("_", "-")
    if key not in _METHODS:
        raise ConfigError(f"unknown method '{name}': expected one of {', '.join(sorted(_METHODS))}")
    return _METHODS[key]


def get_allocator(name: str) -> Callable[..., Any]:
    _load_builtins()
    if name not in _ALLOCATORS:
        raise ConfigError(
            f"unknown allocator '{name}': expected one of {', '.join(sorted(_ALLOCATORS))}"
        )
    return _ALLOCATORS[name]
