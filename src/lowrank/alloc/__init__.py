"""Rank allocators: per-matrix ranks that meet one global parameter budget."""

from .budget import Allocation, BudgetItem, RankConstraints, total_cost
from .energy import energy
from .sensitivity import sensitivity
from .uniform import uniform
from .v2 import svdllm_v2
from .welore import welore

__all__ = [
    "Allocation",
    "BudgetItem",
    "RankConstraints",
    "energy",
    "sensitivity",
    "svdllm_v2",
    "total_cost",
    "uniform",
    "welore",
]
