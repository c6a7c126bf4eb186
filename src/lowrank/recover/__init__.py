"""Low-rank matrix recovery: completion, robust recovery under outliers, matrix sensing.

Functions take numpy arrays, torch tensors (any device) or scipy sparse matrices and return
the caller's array type. The scikit-learn estimators (``MatrixCompletion``, ``RobustRecovery``,
``MatrixSensing``) load lazily and need scikit-learn.
"""

from __future__ import annotations

from typing import Any

from .complete import Recovery, complete
from .impute import iterative_svd, soft_impute
from .robust import robust, robust_pca
from .sense import rebalance, sense

_ESTIMATORS = ("MatrixCompletion", "RobustRecovery", "MatrixSensing")


def __getattr__(name: str) -> Any:
    if name in _ESTIMATORS:
        try:
            from . import estimators
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(f"lowrank.recover.{name} needs scikit-learn "
                              "(pip install scikit-learn)") from exc
        return getattr(estimators, name)
    raise AttributeError(f"module 'lowrank.recover' has no attribute {name!r}")


__all__ = [
    "MatrixCompletion",
    "MatrixSensing",
    "Recovery",
    "RobustRecovery",
    "complete",
    "iterative_svd",
    "rebalance",
    "robust",
    "robust_pca",
    "sense",
    "soft_impute",
]
