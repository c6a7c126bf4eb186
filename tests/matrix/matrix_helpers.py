"""Planted low-rank problems shared by the recovery tests."""

from __future__ import annotations

import numpy as np


def planted(m: int, n: int, r: int, seed: int = 0) -> np.ndarray:
    """A rank-``r`` matrix ``U V^T / sqrt(r)`` with Gaussian factors (entries of unit variance)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, r)) @ rng.standard_normal((r, n)) / np.sqrt(r)


def rel(a, b, where=None) -> float:
    a, b = np.asarray(a), np.asarray(b)
    if where is not None:
        a, b = a[where], b[where]
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))
