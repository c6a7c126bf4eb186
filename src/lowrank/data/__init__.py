"""Bundled default data (no network): CPython's documentation text."""

from .default_text import default_passages

__all__ = ["default_passages"]
