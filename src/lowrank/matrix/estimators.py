"""scikit-learn estimators over the recovery solvers (needs scikit-learn).

* :class:`MatrixCompletion`: a transformer that imputes missing entries (NaN, or the unstored
  entries of a sparse matrix). ``fit`` learns the column factors ``components_`` by
  :func:`~lowrank.matrix.complete` (or SoftImpute / IterativeSVD); ``transform`` folds each row
  into them by least squares on its observed entries and fills the rest.
* :class:`RobustRecovery`: a transformer that splits data into low-rank plus gross outliers
  (:func:`~lowrank.matrix.robust` or :func:`~lowrank.matrix.robust_pca`); ``transform``
  returns the low-rank part of each row, fitted to ``components_`` in the l1 sense (IRLS).
* :class:`MatrixSensing`: a regressor whose coefficient is a low-rank ``m x n`` matrix:
  ``y_i = <A_i, X>`` with each sample a flattened ``A_i`` (:func:`~lowrank.matrix.sense`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from lowrank.errors import ConfigError, DataError
from lowrank.utils.checks import check_finite, check_int, check_rank

from ._data import observe
from .complete import altmin
from .impute import iterative_svd, soft_impute
from .robust import robust, robust_pca
from .sense import sense


def _components(U: torch.Tensor, V: torch.Tensor, k: int) -> np.ndarray:
    """Orthonormal right singular vectors (``k x n``) of ``U V^T``."""
    Qu, Ru = torch.linalg.qr(U)
    Qv, Rv = torch.linalg.qr(V)
    _, _, Wt = torch.linalg.svd(Ru @ Rv.T)
    return (Qv @ Wt[:k].T).T.numpy()


def _fold_in(X: np.ndarray, observed: np.ndarray, C: np.ndarray, reg: float) -> np.ndarray:
    """Row coefficients ``argmin_u ||(u C - x)_obs||^2 + reg ||u||^2`` for every row at once."""
    Xt = torch.from_numpy(np.where(observed, X, 0.0))
    W = torch.from_numpy(observed.astype(np.float64))
    Ct = torch.from_numpy(C)
    gram = torch.einsum("ij,kj,lj->ikl", W, Ct, Ct)
    ridge = (reg + 1e-12) * max(float(gram.diagonal(dim1=1, dim2=2).mean()), 1e-300)
    gram = gram + ridge * torch.eye(C.shape[0], dtype=gram.dtype)
    rhs = Xt @ Ct.T
    return torch.linalg.solve(gram, rhs).numpy()


class MatrixCompletion(TransformerMixin, BaseEstimator):
    """Low-rank imputation of missing entries (NaN or unstored sparse entries).

    Parameters:
        rank: target rank (at most ``min(n_samples, n_features)`` at ``fit``).
        method: ``"altmin"`` (robust alternating minimisation, Gu et al. 2024),
            ``"soft_impute"`` or ``"iterative_svd"`` (fancyimpute's defaults).
        max_iter: iteration cap (None: the method's default: 100, 100, 200).
        tol: AltMin's tolerance on the relative observed residual.
        cg_steps: CG steps per row solve (None: exact).
        reg: ridge on the row solves (AltMin and ``transform``), relative to the mean
            diagonal of the row normal equations.
        seed: random seed.
        verbose: progress bar on stderr.

    Attributes:
        components_: ``rank x n_features`` orthonormal column factors.
        row_factors_: ``n_samples x rank`` row coefficients of the training data.
        n_iter_, history_, converged_: the solver's record (AltMin: relative observed residual
            per sweep; the imputers: relative change on the missing entries).
    """

    def __init__(self, rank: int = 10, method: str = "altmin", max_iter: int | None = None,
                 tol: float = 1e-10, cg_steps: int | None = 3, reg: float = 0.0,
                 seed: int | None = 0, verbose: bool = False) -> None:
        self.rank = rank
        self.method = method
        self.max_iter = max_iter
        self.tol = tol
        self.cg_steps = cg_steps
        self.reg = reg
        self.seed = seed
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.sparse = True
        return tags

    def _validate(self, X: Any, reset: bool) -> Any:
        return validate_data(self, X, reset=reset, accept_sparse=["csr", "csc", "coo"],
                             ensure_all_finite="allow-nan", dtype=np.float64)

    def fit(self, X: Any, y: Any = None) -> MatrixCompletion:
        """Learn the column factors from the observed entries of ``X``."""
        if self.method not in ("altmin", "soft_impute", "iterative_svd"):
            raise ConfigError(f"method must be 'altmin', 'soft_impute' or 'iterative_svd', "
                              f"got {self.method!r}")
        X = self._validate(X, reset=True)
        obs = observe(X)
        m, n = obs.shape
        k = check_rank(self.rank, min(m, n), f"the {m}x{n} training data")
        check_finite("reg", self.reg, 0)
        default = {"altmin": 100, "soft_impute": 100, "iterative_svd": 200}[self.method]
        max_iter = default if self.max_iter is None else check_int("max_iter", self.max_iter)
        if self.method == "altmin":
            U, V, hist, conv = altmin(obs, k, max_iter=max_iter, tol=self.tol,
                                      cg_steps=self.cg_steps, reg=self.reg, seed=self.seed,
                                      verbose=self.verbose)
        else:
            mask = obs.dense_mask().numpy()
            dense = obs.dense_filled(0.0).numpy()
            if self.method == "soft_impute":
                filled, hist = soft_impute(dense, mask, max_iters=max_iter, seed=self.seed,
                                           return_history=True)
            else:
                filled, hist = iterative_svd(
                    dense, mask, rank=min(k, min(m, n) - 1) if min(m, n) > 1 else 1,
                    max_iters=max_iter, seed=self.seed, return_history=True,
                    svd_algorithm="arpack" if min(m, n) > 1 else "randomized")
            Ut, s, Vt = torch.linalg.svd(torch.from_numpy(filled), full_matrices=False)
            U, V = Ut[:, :k] * s[:k], Vt[:k].T
            conv = len(hist) < max_iter
        self.components_ = _components(U, V, k)
        self.row_factors_ = (U @ (V.T @ torch.from_numpy(self.components_).T)).numpy()
        self.n_iter_ = len(hist)
        self.history_ = list(hist)
        self.converged_ = bool(conv)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """``X`` with its missing entries filled from the fitted low-rank model (dense)."""
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        if hasattr(X, "toarray"):
            coo = X.tocoo()
            dense = np.zeros(X.shape)
            observed = np.zeros(X.shape, dtype=bool)
            dense[coo.row, coo.col] = coo.data
            observed[coo.row, coo.col] = True
        else:
            dense = np.asarray(X, dtype=np.float64)
            observed = ~np.isnan(dense)
        coef = _fold_in(dense, observed, self.components_, self.reg)
        return np.where(observed, dense, coef @ self.components_)


class RobustRecovery(TransformerMixin, BaseEstimator):
    """Low-rank plus gross outliers: ``X = L + S``.

    Parameters:
        rank: fitted rank (``"subgradient"``: may over-estimate the true rank; ``"pcp"``: the
            number of ``components_`` kept from the recovered ``L``).
        method: ``"subgradient"`` (l1 sub-gradient method, Ma & Fattahi) or ``"pcp"`` (robust
            PCA by principal component pursuit).
        lam: PCP's l1 weight (None: ``1/sqrt(max(m, n))``).
        init_scale, step, decay: the sub-gradient method's ``alpha``, ``eta_0`` and ``rho``.
        max_iter: iteration cap (None: 2500 for the sub-gradient method, 500 for PCP).
        refine: exact refit on the detected inliers after the sub-gradient method.
        seed: random seed. verbose: progress bar on stderr.

    Attributes:
        low_rank_, sparse_: the split of the training data (``sparse_ = X - low_rank_``).
        components_: ``rank x n_features`` orthonormal row-space basis of ``low_rank_``.
        n_iter_, history_: the solver's record (relative l1 loss, or PCP's relative
            constraint violation).
    """

    def __init__(self, rank: int = 10, method: str = "subgradient", lam: float | None = None,
                 init_scale: float = 1e-5, step: float = 0.2, decay: float = 0.997,
                 max_iter: int | None = None, refine: bool = False, seed: int | None = 0,
                 verbose: bool = False) -> None:
        self.rank = rank
        self.method = method
        self.lam = lam
        self.init_scale = init_scale
        self.step = step
        self.decay = decay
        self.max_iter = max_iter
        self.refine = refine
        self.seed = seed
        self.verbose = verbose

    def fit(self, X: Any, y: Any = None) -> RobustRecovery:
        """Split ``X`` into a low-rank part and sparse outliers."""
        if self.method not in ("subgradient", "pcp"):
            raise ConfigError(f"method must be 'subgradient' or 'pcp', got {self.method!r}")
        X = validate_data(self, X, dtype=np.float64)
        m, n = X.shape
        k = check_rank(self.rank, min(m, n), f"the {m}x{n} training data")
        max_iter = (2500 if self.method == "subgradient" else 500) if self.max_iter is None \
            else check_int("max_iter", self.max_iter)
        if self.method == "subgradient":
            res = robust(X, k, init_scale=self.init_scale, step=self.step, decay=self.decay,
                         max_iter=max_iter, refine=self.refine, seed=self.seed,
                         return_factors=True, verbose=self.verbose)
            U, V = torch.from_numpy(res.left), torch.from_numpy(res.right)
            L, hist = (U @ V.T).numpy(), res.history
        else:
            L, _, hist = robust_pca(X, lam=self.lam, max_iter=max_iter, return_history=True,
                                    verbose=self.verbose)
            Ut, s, Vt = torch.linalg.svd(torch.from_numpy(L), full_matrices=False)
            U, V = Ut[:, :k] * s[:k], Vt[:k].T
        self.low_rank_ = L
        self.sparse_ = X - L
        self.components_ = _components(U, V, k)
        self.n_iter_ = len(hist)
        self.history_ = list(hist)
        return self

    def transform(self, X: Any, n_irls: int = 30) -> np.ndarray:
        """Low-rank part of each row: ``u C`` with ``u = argmin ||u C - x||_1`` (IRLS)."""
        check_is_fitted(self)
        check_int("n_irls", n_irls, 0)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        C = self.components_
        observed = np.ones(X.shape, dtype=bool)
        coef = _fold_in(X, observed, C, 0.0)
        Ct, Xt = torch.from_numpy(C), torch.from_numpy(X)
        scale = max(float(np.abs(X).mean()), 1e-300)
        for _ in range(n_irls):
            r = (torch.from_numpy(coef) @ Ct - Xt).abs()
            w = 1.0 / torch.clamp(r, min=1e-10 * scale)
            gram = torch.einsum("ij,kj,lj->ikl", w, Ct, Ct)
            gram = gram + 1e-12 * gram.diagonal(dim1=1, dim2=2).mean() * torch.eye(C.shape[0],
                                                                                   dtype=w.dtype)
            coef = torch.linalg.solve(gram, (w * Xt) @ Ct.T).numpy()
        return coef @ C


class MatrixSensing(RegressorMixin, BaseEstimator):
    """Linear regression with a low-rank ``m x n`` coefficient matrix (matrix sensing).

    Each sample is a flattened measurement matrix ``A_i`` (``m * n`` features) and ``y_i =
    <A_i, X>``. ``shape=None`` takes ``(s, s)`` when the feature count is a square ``s^2``, else
    ``(n_features, 1)`` (a vector coefficient).

    Parameters:
        rank: factor width (may exceed the true rank). shape: ``(m, n)`` or None.
        symmetric: ``X = F F^T``. loss: ``"l2"`` (factored GD with the one-step fix) or ``"l1"``
            (robust sub-gradient method).
        init_scale, step, max_iter, tol, rebalance_at: see :func:`lowrank.matrix.sense`.
        seed: random seed. verbose: progress bar on stderr.

    Attributes:
        coef_: the recovered ``m x n`` matrix. left_factor_, right_factor_: ``F`` and ``G``.
        n_iter_, history_, converged_: GD's record (relative residual per iteration).
    """

    def __init__(self, rank: int = 2, shape: tuple[int, int] | None = None,
                 symmetric: bool = False, loss: str = "l2", init_scale: float | None = None,
                 step: float | None = None, max_iter: int | None = None, tol: float = 1e-10,
                 rebalance_at: float | None = 1e-2, seed: int | None = 0,
                 verbose: bool = False) -> None:
        self.rank = rank
        self.shape = shape
        self.symmetric = symmetric
        self.loss = loss
        self.init_scale = init_scale
        self.step = step
        self.max_iter = max_iter
        self.tol = tol
        self.rebalance_at = rebalance_at
        self.seed = seed
        self.verbose = verbose

    def _shape(self, p: int) -> tuple[int, int]:
        if self.shape is not None:
            shape = tuple(int(s) for s in self.shape)
            if len(shape) != 2 or shape[0] * shape[1] != p:
                raise DataError(f"shape {self.shape} does not match {p} features "
                                "(expected m * n = n_features)")
            return shape  # type: ignore[return-value]
        s = math.isqrt(p)
        return (s, s) if s * s == p else (p, 1)

    def fit(self, X: Any, y: Any) -> MatrixSensing:
        """Fit the low-rank coefficient from measurements ``X`` (N x m*n) and ``y`` (N)."""
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        shape = self._shape(X.shape[1])
        res = sense(X, y, self.rank, shape=shape, symmetric=self.symmetric, loss=self.loss,
                    init_scale=self.init_scale, step=self.step, max_iter=self.max_iter,
                    tol=self.tol, rebalance_at=self.rebalance_at, seed=self.seed,
                    return_factors=True, verbose=self.verbose)
        self.left_factor_, self.right_factor_ = res.left, res.right
        self.coef_ = res.left @ res.right.T
        self.n_iter_ = res.n_iter
        self.history_ = list(res.history)
        self.converged_ = bool(res.converged)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """``<A_i, coef_>`` for every flattened measurement matrix ``A_i`` in ``X``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return X @ self.coef_.reshape(-1)
