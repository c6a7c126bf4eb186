"""Lazy module attributes (PEP 562): optional or heavy parts of a package load on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, targets: Mapping[str, str],
                    requires: str | None = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: attribute ``name`` is ``targets[name]``, a module
    relative to the package (``".matrix"``) or an attribute of one (``".estimators:CP"``),
    imported on first access. With ``requires`` a failed import says what to install."""

    def __getattr__(name: str) -> Any:
        if name not in targets:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        path, _, attribute = targets[name].partition(":")
        try:
            module = importlib.import_module(path, package)
        except ImportError as exc:
            if requires is None:
                raise
            raise ImportError(f"{package}.{name} needs {requires}") from exc
        return getattr(module, attribute) if attribute else module

    return __getattr__
