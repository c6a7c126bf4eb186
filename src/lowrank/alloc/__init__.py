"""Allocators: spend one global budget (``keep``) over the targeted layers.

``base.py`` holds the contract (:class:`RankAllocator`, :class:`OptionAllocator`) and the
registry :data:`ALLOCATORS`; ``budget.py`` the budget, per-matrix constraints and the shared
bisection/greedy steps; one file per allocator registers itself when this package is imported.
"""

from .base import ALLOCATORS, Allocator, Menu, OptionAllocator, Probe, RankAllocator
from .budget import Allocation, BudgetItem, RankConstraints, total_cost
from .energy import Energy
from .output_error import OutputErrorAllocator
from .sensitivity import Sensitivity, SensitivitySqrt
from .uniform import Uniform
from .v2 import SVDLLMV2
from .welore import WeLore

__all__ = [
    "ALLOCATORS",
    "SVDLLMV2",
    "Allocation",
    "Allocator",
    "BudgetItem",
    "Energy",
    "Menu",
    "OptionAllocator",
    "OutputErrorAllocator",
    "Probe",
    "RankAllocator",
    "RankConstraints",
    "Sensitivity",
    "SensitivitySqrt",
    "Uniform",
    "WeLore",
    "total_cost",
]
