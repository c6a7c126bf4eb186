"""Bundled data, no network: the embedded default text (CPython's documentation topics,
``default_text``), real text of another domain (licence texts of the installed packages,
``other_domain``) and images for vision models (scikit-learn's digits or a directory of
PNG/JPEG files, ``images``)."""

from .default_text import default_passages
from .other_domain import other_domain_passages

__all__ = ["default_passages", "other_domain_passages"]
