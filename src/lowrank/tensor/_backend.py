"""Lazy, scoped access to tensorly: every call runs inside ``backend_context`` so tensorly's
process-global backend is never changed (tltorch sets it to pytorch at import; we do not)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ..errors import LowRankError


def tensorly() -> Any:
    """Import tensorly or raise a clear error naming the extra to install."""
    try:
        import tensorly as tl
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise LowRankError("lowrank.tensor delegates dense decompositions to tensorly: "
                           "pip install 'lowrank[tensor]' (or pip install tensorly)") from exc
    return tl


@contextmanager
def scoped(backend: str = "numpy") -> Iterator[Any]:
    """``with scoped('numpy') as tl:`` runs tensorly on ``backend`` in this thread only."""
    tl = tensorly()
    with tl.backend.backend_context(backend, local_threadsafe=True):
        yield tl


def as_numpy(x: Any, name: str = "tensor") -> np.ndarray:
    """float64 numpy copy of an array-like (numpy, torch, nested lists)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_complex():
            return x.numpy().astype(np.complex128)
        return x.to(torch.float64).numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:
        raise LowRankError(f"{name} must be an array (numpy or torch), got "
                           f"{type(x).__name__}") from exc
    if arr.dtype.kind not in "biufc":
        raise LowRankError(f"{name} must hold numbers, got dtype {arr.dtype}")
    return arr.astype(np.complex128 if arr.dtype.kind == "c" else np.float64)


def like(arr: np.ndarray, ref: Any) -> Any:
    """``arr`` as a torch tensor (ref's dtype/device) when ``ref`` is one, else numpy."""
    if isinstance(ref, torch.Tensor):
        dtype = ref.dtype if ref.is_floating_point() or ref.is_complex() else torch.float64
        return torch.as_tensor(np.ascontiguousarray(arr)).to(dtype=dtype, device=ref.device)
    return arr
