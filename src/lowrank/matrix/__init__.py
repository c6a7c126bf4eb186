"""Low-rank matrix recovery: completion from a fraction of the entries (``complete``, with the
SoftImpute / IterativeSVD baselines in ``impute``), robust recovery under gross outliers and
robust PCA (``robust``), and matrix sensing from linear measurements (``sense``).

Functions take numpy arrays, torch tensors (any device) or scipy sparse matrices and return
the caller's array type. The scikit-learn estimators (``MatrixCompletion``, ``RobustRecovery``,
``MatrixSensing``) load lazily and need scikit-learn. (Recovery fine-tuning of compressed models
is :mod:`lowrank.finetune`.)
"""

from lowrank.utils.lazy import lazy_attributes

from .complete import Recovery, complete
from .impute import iterative_svd, soft_impute
from .robust import robust, robust_pca
from .sense import rebalance, sense

__getattr__ = lazy_attributes(
    __name__, {name: f".estimators:{name}"
               for name in ("MatrixCompletion", "RobustRecovery", "MatrixSensing")},
    requires="scikit-learn (pip install scikit-learn)")

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
