"""Tensor decompositions: Tucker, CP, TT and TT-matrix (``decomp``), masked completion
(``completion``), functional Tucker (FunBaT, ``funbat``) and Chebyshev-Tucker interpolation
(``chebyshev``); decompositions come back in the input's array type (numpy or torch).

tensorly is needed (optional extra ``lowrank[tensor]``) and imported lazily; its global backend is
never changed. The scikit-learn transformers (``Tucker``, ``CP``, ``TT``) load lazily and need
scikit-learn.
"""

from ..utils.lazy import lazy_attributes
from .chebyshev import ChebyshevTucker
from .completion import complete_cp, complete_tucker
from .decomp import (
    CPTensor,
    TTMatrix,
    TTTensor,
    TuckerTensor,
    cp,
    relative_error,
    tt,
    tt_matrix,
    tucker,
)
from .funbat import FunctionalTucker

__getattr__ = lazy_attributes(
    __name__, {name: f".estimators:{name}" for name in ("CP", "TT", "Tucker")},
    requires="scikit-learn (pip install scikit-learn)")

__all__ = [
    "CP",
    "TT",
    "CPTensor",
    "ChebyshevTucker",
    "FunctionalTucker",
    "TTMatrix",
    "TTTensor",
    "Tucker",
    "TuckerTensor",
    "complete_cp",
    "complete_tucker",
    "cp",
    "relative_error",
    "tt",
    "tt_matrix",
    "tucker",
]
