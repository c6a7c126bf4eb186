"""Bundled default data (no network): CPython's documentation text."""

from .default_text import default_passages
from .other_domain import other_domain_passages

__all__ = ["default_passages", "other_domain_passages"]
