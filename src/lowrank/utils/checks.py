"""Argument checks shared by the numeric entry points.

Each check raises a one-line error that names the value and says what was expected:
:class:`~lowrank.errors.ConfigError` for hyper-parameters and ranks,
:class:`~lowrank.errors.DataError` for the contents of arrays.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    left = "(" if low_open or low == -math.inf else "["
    right = ")" if high_open or high == math.inf else "]"
    return f"{left}{low:g}, {high:g}{right}"


def check_finite(name: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float; it must be a finite real number in ``[low, high]`` (an end is
    excluded with ``low_open`` / ``high_open``). Bools and complex numbers are refused."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    number = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    x = float(value) if number else math.nan
    inside = (x > low if low_open else x >= low) and (x < high if high_open else x <= high)
    if not (math.isfinite(x) and inside):
        where = "" if (low, high) == (-math.inf, math.inf) else \
            f" in {_interval(low, high, low_open, high_open)}"
        raise ConfigError(f"{name} must be a finite number{where}, got {value!r}")
    return x


def check_int(name: str, value: Any, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (no upper bound when ``high`` is None); bools and
    floats (even integral ones) are refused."""
    integer = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not integer or value < low or (high is not None and value > high):
        if high is not None:
            expected = f"an int in [{low}, {high}]"
        else:
            expected = {0: "a non-negative int", 1: "a positive int"}.get(low, f"an int >= {low}")
        raise ConfigError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def check_rank(rank: Any, limit: int | None, what: str, name: str = "rank", low: int = 1
               ) -> int:
    """A target rank: an int, at least ``low`` (positive by default) and at most ``limit`` (the
    largest rank ``what`` can have)."""
    rank = check_int(name, rank, low)
    if limit is not None and rank > limit:
        raise ConfigError(f"{name} {rank} exceeds the largest possible rank {limit} of {what}")
    return rank


def check_real(name: str, x: Any) -> None:
    """Refuse a complex array (numpy or torch): casting it to a real dtype would silently drop
    the imaginary part."""
    dtype = x.dtype if isinstance(x, torch.Tensor) else np.asarray(x).dtype
    if (dtype.is_complex if isinstance(dtype, torch.dtype) else dtype.kind == "c"):
        raise DataError(f"{name} has the complex dtype {dtype}; expected real values (the "
                        "imaginary part would be dropped)")


def check_finite_values(name: str, x: Any, *, what: str = "entries", hint: str = "") -> None:
    """Refuse NaN or infinite entries in the array ``x`` (numpy or torch), counting them;
    ``what`` names the entries, ``hint`` is appended to the message."""
    if isinstance(x, torch.Tensor):
        count, total = int((~torch.isfinite(x)).sum()), x.numel()
    else:
        arr = np.asarray(x)
        count, total = int((~np.isfinite(arr)).sum()), arr.size
    if count:
        raise DataError(f"{name} holds {count} NaN or infinite {what} (of {total}); expected "
                        f"finite values{hint}")
