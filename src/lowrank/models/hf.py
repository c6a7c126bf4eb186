"""Differences between transformers versions that the loaders need to know."""

from __future__ import annotations

from typing import Any


def dtype_keyword(transformers: Any) -> str:
    """``from_pretrained``'s dtype keyword: ``dtype`` from transformers 4.56 (which deprecates
    ``torch_dtype``), ``torch_dtype`` before (where ``dtype`` would be ignored)."""
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"
