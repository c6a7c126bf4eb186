"""Rank allocators: per-matrix ranks that meet one global parameter budget."""

from .budget import Allocation, BudgetItem, total_cost
from .energy import energy
from .uniform import uniform

__all__ = ["Allocation", "BudgetItem", "energy", "total_cost", "uniform"]
