"""scikit-learn transformers over :mod:`lowrank.tensor.decomp` (needs scikit-learn).

Mode 0 holds the samples: ``fit_transform(X)`` returns the mode-0 factor (one row per sample)
and ``transform(X_new)`` solves for the rows of new samples against the learned other modes,
``inverse_transform`` maps rows back to tensors. Learned attributes end in ``_``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from ..errors import LowRankError
from ..linalg.arrays import as_numpy
from ..utils.checks import check_finite_values, check_real
from .decomp import CPTensor, TTTensor, TuckerTensor, cp, tt, tucker

__all__ = ["CP", "TT", "Tucker"]


def _real(x: Any, name: str) -> np.ndarray:
    """``x`` as a real, finite float64 array (the learned bases are real)."""
    arr = as_numpy(x, name)
    check_real(name, arr)
    check_finite_values(name, arr)
    return arr


class _TensorEstimator(TransformerMixin, BaseEstimator, ABC):
    """Shared fit/transform of the Tucker, CP and TT estimators; each subclass says how to
    decompose (``_fit``), which mode-0 rows it learns (``_mode0``) and the basis they multiply
    (``_rest``). Parameters are the ``__init__`` arguments (scikit-learn's ``get_params``)."""

    decomposition_: Any

    @abstractmethod
    def _fit(self, x: np.ndarray) -> Any:
        """Decompose ``x`` with the estimator's parameters."""

    @abstractmethod
    def _rest(self) -> np.ndarray:
        """The learned basis: (mode-0 rank, product of the other modes)."""

    def fit(self, x: Any, y: Any = None) -> _TensorEstimator:
        arr = as_numpy(x, "X")
        dec = self._fit(arr)
        self.decomposition_ = dec
        self.rel_error_ = float(dec.rel_error)
        self.shape_ = tuple(arr.shape)
        self.components_ = self._rest()  # (r0, prod of the other modes)
        self._pinv = np.linalg.pinv(self.components_)
        return self

    def _check(self) -> None:
        try:
            check_is_fitted(self, "decomposition_")
        except NotFittedError as exc:
            raise LowRankError(f"{type(self).__name__} is not fitted: call fit(X) "
                               "first") from exc

    def transform(self, x: Any) -> np.ndarray:
        """Least-squares mode-0 rows of ``x`` (samples x the other modes) on the learned basis."""
        self._check()
        arr = _real(x, "X")
        if arr.shape[1:] != self.shape_[1:]:
            raise LowRankError(f"X must have trailing shape {self.shape_[1:]}, got "
                               f"{arr.shape[1:]}")
        return arr.reshape(arr.shape[0], -1) @ self._pinv

    def fit_transform(self, x: Any, y: Any = None) -> np.ndarray:
        self.fit(x)
        return self._mode0()

    def inverse_transform(self, rows: Any) -> np.ndarray:
        self._check()
        rows = _real(rows, "rows")
        return (rows @ self.components_).reshape(rows.shape[0], *self.shape_[1:])

    @abstractmethod
    def _mode0(self) -> np.ndarray:
        """The learned mode-0 rows of the fitted tensor."""


class Tucker(_TensorEstimator):
    """Tucker (HOOI) estimator: ``core_``, ``factors_``, ``rel_error_``, ``components_``."""

    def __init__(self, rank: int | Sequence[int], *, n_iter_max: int = 100, tol: float = 1e-4,
                 svd: str = "auto", random_state: int | None = 0) -> None:
        self.rank, self.n_iter_max, self.tol = rank, n_iter_max, tol
        self.svd, self.random_state = svd, random_state

    def _fit(self, x: np.ndarray) -> TuckerTensor:
        dec = tucker(x, self.rank, n_iter_max=self.n_iter_max, tol=self.tol, svd=self.svd,
                     random_state=self.random_state)
        self.core_, self.factors_ = dec.core, dec.factors
        return dec

    def _rest(self) -> np.ndarray:
        d = self.decomposition_
        r0 = d.factors[0].shape[1]
        rest = TuckerTensor(d.core, [np.eye(r0), *d.factors[1:]]).to_dense()
        return rest.reshape(r0, -1)

    def _mode0(self) -> np.ndarray:
        return self.factors_[0]


class CP(_TensorEstimator):
    """CP (ALS) estimator: ``weights_``, ``factors_``, ``rel_error_``, ``components_``."""

    def __init__(self, rank: int, *, n_iter_max: int = 100, tol: float = 1e-8,
                 init: str = "random", n_restarts: int = 3, random_state: int | None = 0) -> None:
        self.rank, self.n_iter_max, self.tol, self.init = rank, n_iter_max, tol, init
        self.n_restarts, self.random_state = n_restarts, random_state

    def _fit(self, x: np.ndarray) -> CPTensor:
        dec = cp(x, self.rank, n_iter_max=self.n_iter_max, tol=self.tol, init=self.init,
                 n_restarts=self.n_restarts, random_state=self.random_state)
        self.weights_, self.factors_ = dec.weights, dec.factors
        return dec

    def _rest(self) -> np.ndarray:
        d = self.decomposition_
        rest = CPTensor(d.weights, [np.eye(d.rank), *d.factors[1:]]).to_dense()
        return rest.reshape(d.rank, -1)

    def _mode0(self) -> np.ndarray:
        return self.factors_[0]


class TT(_TensorEstimator):
    """Tensor-train estimator: ``cores_``, ``rel_error_``, ``components_``."""

    def __init__(self, rank: int | Sequence[int], *, svd: str = "auto",
                 random_state: int | None = 0) -> None:
        self.rank, self.svd, self.random_state = rank, svd, random_state

    def _fit(self, x: np.ndarray) -> TTTensor:
        dec = tt(x, self.rank, svd=self.svd, random_state=self.random_state)
        self.cores_ = dec.cores
        return dec

    def _rest(self) -> np.ndarray:
        d = self.decomposition_
        r1 = d.cores[0].shape[2]
        rest = TTTensor([np.eye(r1)[None], *d.cores[1:]]).to_dense()
        return rest.reshape(r1, -1)

    def _mode0(self) -> np.ndarray:
        return self.cores_[0][0]
