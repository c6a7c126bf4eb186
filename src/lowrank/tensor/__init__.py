"""Tensor decompositions (Tucker, CP, TT, TT-matrix), masked completion, functional Tucker
(FunBaT) and Chebyshev-Tucker. tensorly is needed (optional extra ``lowrank[tensor]``) and
imported lazily; its global backend is never changed."""

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
from .estimators import CP, TT, Tucker
from .funbat import FunctionalTucker

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
