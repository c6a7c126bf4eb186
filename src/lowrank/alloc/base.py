"""The allocator contract and the registry of allocators.

An allocator spends one global budget, ``keep`` (the fraction of the targeted parameters that
remain), over the targeted layers. It is a class registered in :data:`ALLOCATORS` under its
``name`` (``alloc="..."`` in a method config) that declares what it needs:

* :class:`RankAllocator`: a rank per matrix from its spectrum (:class:`BudgetItem`), honouring
  the per-matrix :class:`RankConstraints`. ``needs_weight_spectrum``: it reads the plain weight
  spectrum (the method fills ``BudgetItem.weight_spectrum``).
* :class:`OptionAllocator`: one option per layer from measured ``(cost, error)`` menus
  (:class:`Menu`), e.g. convolutions at a grid of keeps.

``needs_probe``: the allocator measures the model's end-to-end change through the
:data:`Probe` the method passes (so the method needs calibration text).

A new allocator is one file in ``alloc/`` with a subclass and the line
``@ALLOCATORS.register`` above it (and its import in ``alloc/__init__``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..registry import Registry
from .budget import UNCONSTRAINED, Allocation, BudgetItem, RankConstraints

#: ``probe(item, rank)``: how much the model's end-to-end quality moves when matrix ``item``
#: alone is truncated to ``rank`` (built by the method from its factors and calibration text).
Probe = Callable[[BudgetItem, int], float]


class Allocator:
    """A registered budget rule; its subclasses say what they spend the budget over."""

    name: ClassVar[str] = ""
    needs_probe: ClassVar[bool] = False


ALLOCATORS: Registry[type[Allocator]] = Registry("allocator", lambda cls: cls.name)


class RankAllocator(Allocator, ABC):
    """Ranks per matrix under ``keep`` of the targeted parameters."""

    needs_weight_spectrum: ClassVar[bool] = False
    #: Whether the ranks depend on the spectra (``False``: on the shapes alone, so the
    #: layer-wise pipeline allocates before decomposing anything).
    needs_spectrum: ClassVar[bool] = True

    @abstractmethod
    def allocate(self, items: Sequence[BudgetItem], keep: float, *,
                 constraints: RankConstraints = UNCONSTRAINED,
                 probe: Probe | None = None) -> Allocation:
        """Ranks (``None``: dense) whose total cost meets ``floor(keep * dense cost)``."""


@dataclass
class Menu:
    """One layer's options in increasing cost: option ``i`` stores ``costs[i]`` parameters
    and leaves the measured (squared relative) error ``errors[i]``."""

    name: str
    dense_cost: int
    costs: list[int]
    errors: list[float]


class OptionAllocator(Allocator, ABC):
    """One option per layer under ``keep`` of the layers' dense cost."""

    @abstractmethod
    def choose(self, menus: Sequence[Menu], keep: float) -> dict[str, int]:
        """The chosen option's index per menu name."""
