"""scikit-learn estimators: the applicable estimator checks, plus recovery through the API.

All of scikit-learn's estimator checks that apply pass (none is expected to fail). The
instances use small ranks and iteration caps because the checks fit tiny data sets (down to one
feature or one sample) many times.
"""

from __future__ import annotations

import numpy as np
import pytest
from matrix_helpers import planted, rel
from sklearn.utils.estimator_checks import parametrize_with_checks

from lowrank.errors import ConfigError
from lowrank.matrix import MatrixCompletion, MatrixSensing, RobustRecovery


@parametrize_with_checks([MatrixCompletion(rank=1), RobustRecovery(rank=1, max_iter=300),
                          MatrixSensing(rank=1, max_iter=500)])
def test_sklearn_checks(estimator, check):
    check(estimator)


def test_matrix_completion_imputes_nan():
    M = planted(120, 80, 3, seed=3)
    mask = np.random.default_rng(4).random(M.shape) < 0.4
    X = np.where(mask, M, np.nan)
    est = MatrixCompletion(rank=3).fit(X)
    assert est.components_.shape == (3, 80) and est.converged_
    assert est.history_[-1] < 1e-9 and est.n_iter_ == len(est.history_)
    assert rel(est.transform(X), M, ~mask) < 1e-6
    # new rows with missing entries: fold-in on the learned column space
    new = planted(120, 80, 3, seed=3)[:10] * 2.0
    part = np.where(np.random.default_rng(9).random(new.shape) < 0.5, new, np.nan)
    assert rel(est.transform(part), new) < 1e-6
    for method in ("soft_impute", "iterative_svd"):
        assert rel(MatrixCompletion(rank=3, method=method).fit_transform(X), M, ~mask) < 0.1


def test_matrix_completion_errors():
    X = np.where(np.eye(5, 4) > 0, 1.0, np.nan)
    with pytest.raises(ConfigError, match="exceeds the largest possible rank 4"):
        MatrixCompletion(rank=5).fit(X)
    with pytest.raises(ConfigError, match="method"):
        MatrixCompletion(rank=1, method="knn").fit(X)


def test_robust_recovery_split():
    L = planted(60, 50, 2, seed=5)
    rng = np.random.default_rng(6)
    S = np.where(rng.random(L.shape) < 0.1, 50 * rng.standard_normal(L.shape), 0.0)
    for est in (RobustRecovery(rank=4, refine=True), RobustRecovery(rank=2, method="pcp")):
        est.fit(L + S)
        assert rel(est.low_rank_, L) < 1e-6
        assert rel(est.transform(L + S), L) < 1e-6


def test_matrix_sensing_coef():
    rng = np.random.default_rng(0)
    X = planted(6, 5, 2, seed=1)
    A = rng.standard_normal((200, 30))
    y = A @ X.ravel()
    est = MatrixSensing(rank=3, shape=(6, 5)).fit(A, y)
    assert est.coef_.shape == (6, 5) and rel(est.coef_, X) < 1e-6
    assert rel(est.predict(A), y) < 1e-6
