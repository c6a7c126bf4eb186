"""Low-rank training: GaLore-family projected optimizers (``galore``, their bases in
``projectors``), memory estimates (``memory``) and trained rank pruning (``trp``).

The small pretraining runs behind ``lowrank train`` (``pretrain``) are imported where they
run, not by this package; the galore-torch reference comparison lives in ``benchmarks/``.
"""

from .galore import GaLoreAdamW, check_distributed_wrapper, galore_groups
from .memory import MemoryEstimate, estimate_memory
from .projectors import dct_matrix
from .trp import TrainedRankPruning, energy_rank

__all__ = [
    "GaLoreAdamW",
    "MemoryEstimate",
    "TrainedRankPruning",
    "check_distributed_wrapper",
    "dct_matrix",
    "energy_rank",
    "estimate_memory",
    "galore_groups",
]
