"""One small generic registry: plugin name -> plugin.

Each package with plugins owns one instance and fills it when imported (``compress.METHODS``,
``alloc.ALLOCATORS``, ``adapt.ADAPTERS``): a plugin module adds itself with one decorator
line, ``@METHODS.register``. Names are normalised one way (lowercase, ``_`` -> ``-``), so
``"svdllm_v2"`` and ``"SVDLLM-V2"`` find the same plugin; a second plugin under a taken name is
refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Plugins of one kind (``"method"``, ``"allocator"``, ...), each under the name that
    ``name_of(plugin)`` gives (a class attribute such as ``method`` or ``name``)."""

    def __init__(self, kind: str, name_of: Callable[[T], str]) -> None:
        self.kind = kind
        self.name_of = name_of
        self._plugins: dict[str, T] = {}

    @staticmethod
    def key(name: str) -> str:
        """The normal form of a plugin name: lowercase, ``_`` -> ``-``."""
        return name.strip().lower().replace("_", "-")

    def register(self, plugin: T) -> T:
        """Add ``plugin`` under its name (usable as a class decorator); refuses a taken name."""
        key = self.key(self.name_of(plugin))
        if not key:
            raise ConfigError(f"a {self.kind} needs a non-empty name, {plugin!r} has none")
        if key in self._plugins:
            raise ConfigError(f"a {self.kind} named '{key}' is already registered "
                              f"({self._plugins[key]!r}); choose another name")
        self._plugins[key] = plugin
        return plugin

    def get(self, name: str) -> T:
        """The plugin registered under ``name`` (any spelling of :meth:`key`)."""
        plugin = self._plugins.get(self.key(str(name)))
        if plugin is None:
            raise ConfigError(f"unknown {self.kind} '{name}': expected one of "
                              f"{', '.join(self.names())}")
        return plugin

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._plugins)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.key(name) in self._plugins

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
