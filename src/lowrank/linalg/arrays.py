"""One array convention for the numeric packages (``tensor``, ``matrix``, ``science``): numpy or
torch in, the same type out.

:class:`ArrayType` records what the caller passed (library, floating dtype, device) and
:meth:`ArrayType.restore` hands a result back in that form. :func:`as_numpy` and :func:`as_torch`
read any array-like (numpy, torch, nested lists, scipy sparse) for computation, refusing
non-numeric data. :func:`einsum`, :func:`mode_dot` and :func:`kron_matvec` (the tensor-times-
matrix products of Kolda & Bader, "Tensor Decompositions and Applications", SIAM Review 2009) run
on either library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ..errors import DataError
from ..utils.checks import check_real

__all__ = ["ArrayType", "as_numpy", "as_torch", "einsum", "is_scipy_sparse", "kron_matvec",
           "mode_dot"]


def is_scipy_sparse(x: Any) -> bool:
    """Whether ``x`` is a scipy sparse matrix or array (scipy itself is not imported)."""
    return type(x).__module__.startswith("scipy.sparse")


@dataclass(frozen=True)
class ArrayType:
    """The array type a caller passed, so results go back in the same form."""

    library: Literal["numpy", "torch"]
    dtype: Any = None  # the input's floating or complex dtype (None: float64)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def of(cls, x: Any) -> ArrayType:
        """The type of ``x``: torch (dtype and device kept), else numpy (scipy sparse and nested
        lists included); integer and boolean inputs come back as float64."""
        if isinstance(x, torch.Tensor):
            inexact = x.dtype.is_floating_point or x.dtype.is_complex
            return cls("torch", x.dtype if inexact else None, x.device)
        dtype = getattr(x, "dtype", None)
        if isinstance(dtype, np.dtype) and dtype.kind in "fc":
            return cls("numpy", dtype)
        return cls("numpy")

    def restore(self, x: np.ndarray | torch.Tensor) -> Any:
        """``x`` as the caller's library, dtype and device."""
        if self.library == "torch":
            dtype = self.dtype if self.dtype is not None else torch.float64
            t = x.detach() if isinstance(x, torch.Tensor) else \
                torch.as_tensor(np.ascontiguousarray(x))
            return t.to(device=self.device, dtype=dtype)
        dtype = self.dtype if self.dtype is not None else np.float64
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        return arr.astype(dtype, copy=False)


def _read(x: Any, name: str) -> np.ndarray | torch.Tensor:
    """``x`` as a dense numpy array or strided torch tensor of numbers (booleans included)."""
    if is_scipy_sparse(x):
        x = x.toarray()
    if isinstance(x, torch.Tensor):
        return (x.to_dense() if x.layout != torch.strided else x).detach()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # numpy raises many kinds
        raise DataError(f"{name} could not be read as an array (numpy or torch): {exc}") from exc
    if arr.dtype.kind not in "biufc":
        raise DataError(f"{name} must hold numbers, got an array of dtype {arr.dtype}")
    return arr


def as_numpy(x: Any, name: str = "array") -> np.ndarray:
    """A float64 (complex128 for complex input) numpy array of ``x``; a torch tensor is moved
    to the CPU."""
    x = _read(x, name)
    if isinstance(x, torch.Tensor):
        x = x.cpu()
        return x.numpy().astype(np.complex128) if x.is_complex() else x.to(torch.float64).numpy()
    return x.astype(np.complex128 if x.dtype.kind == "c" else np.float64)


def as_torch(x: Any, name: str = "array", dtype: torch.dtype = torch.float64,
             device: torch.device | str | None = None) -> torch.Tensor:
    """A dense real tensor of ``x`` with ``dtype`` on ``device`` (default: where ``x`` is, the
    CPU for numpy); complex input is refused (the cast would drop the imaginary part)."""
    x = _read(x, name)
    check_real(name, x)
    if isinstance(x, np.ndarray):
        x = np.ascontiguousarray(x)
        x = torch.from_numpy(x if x.flags.writeable else x.copy())
    return x.to(device=device if device is not None else x.device, dtype=dtype)


def einsum(eq: str, *ops: Any) -> Any:
    """``einsum`` on numpy arrays or torch tensors (torch when any operand is one)."""
    if any(isinstance(o, torch.Tensor) for o in ops):
        return torch.einsum(eq, *[torch.as_tensor(o) for o in ops])
    return np.einsum(eq, *ops, optimize=True)


def mode_dot(x: Any, matrix: Any, mode: int) -> Any:
    """The mode-``mode`` product ``x ×_mode matrix`` (``matrix`` is new size x old size): every
    mode-``mode`` fibre of ``x`` is multiplied by ``matrix``. Torch when either operand is."""
    if isinstance(x, torch.Tensor) or isinstance(matrix, torch.Tensor):
        x, matrix = torch.as_tensor(x), torch.as_tensor(matrix)
        return torch.movedim(torch.tensordot(matrix, x, dims=([1], [mode])), 0, mode)
    return np.moveaxis(np.tensordot(matrix, x, axes=(1, mode)), 0, mode)


def kron_matvec(mats: Sequence[Any], x: Any) -> Any:
    """``(M_1 (x) ... (x) M_D) vec(x)`` as a tensor (row-major ``vec``): ``x ×_1 M_1 … ×_D M_D``,
    without forming the Kronecker product."""
    for mode, m in enumerate(mats):
        x = mode_dot(x, m, mode)
    return x
