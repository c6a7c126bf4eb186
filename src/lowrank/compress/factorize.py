"""Budgeted low-rank factorization: the shared flow of SVD, ASVD, FWSVD and SVD-LLM.

A :class:`FactorizationConfig` only says how to weight one matrix (:meth:`decompose` returns
the weighted SVD, from which factors at every rank follow); this module decomposes every
targeted matrix, lets the allocator spend the global budget over their spectra, and swaps in
:class:`LowRankLinear` modules (or leaves a matrix dense where a factorization would not save).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..alloc.budget import BudgetItem
from ..calib.stats import CalibrationStats
from ..errors import ConfigError, DataError
from ..linalg import WhitenedSVD
from ..nn import LowRankLinear
from ..registry import get_allocator
from .base import CompressionConfig, MethodOutcome, output_error, replace_module
from .result import ModuleReport


@dataclass
class FactorizationConfig(CompressionConfig):
    """A low-rank factorization under a global parameter budget (``keep``, ``alloc``)."""

    keep: float = field(default=0.8, metadata={
        "help": "fraction of the targeted parameters that remain (0 < keep <= 1); keep=0.8 is "
                "what the literature calls a 20% compression ratio"})
    alloc: str = field(default="uniform", metadata={
        "help": "rank allocator: 'uniform' (same keep for every matrix) or 'energy' (same "
                "fraction of weighted spectral energy per matrix, bisected to the budget)"})

    def __post_init__(self) -> None:
        from ..registry import allocator_names

        super().__post_init__()
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)):
            raise ConfigError(f"keep must be a number in (0, 1], got {self.keep!r}")
        if not 0 < float(self.keep) <= 1:
            raise ConfigError(
                f"keep must be in (0, 1] (fraction of parameters kept), got {self.keep}")
        self.keep = float(self.keep)
        if self.alloc not in allocator_names():
            raise ConfigError(f"unknown allocator '{self.alloc}': expected one of "
                              f"{', '.join(allocator_names())}")

    @abstractmethod
    def decompose(self, weight: torch.Tensor, name: str,
                  stats: CalibrationStats | None) -> WhitenedSVD:
        """Weighted SVD of ``weight`` (out x in, float64) for module ``name``."""

    def apply(self, model: nn.Module, modules: dict[str, nn.Module],
              stats: CalibrationStats | None) -> MethodOutcome:
        return factorize(self, model, modules, stats)


def factorize(config: FactorizationConfig, model: nn.Module, modules: dict[str, nn.Module],
              stats: CalibrationStats | None) -> MethodOutcome:
    """Decompose, allocate under ``config.keep``, and replace; one report per module."""
    decomps, items = {}, []
    for name, lin in modules.items():
        decomps[name] = config.decompose(lin.weight.detach().to(torch.float64), name, stats)
        items.append(BudgetItem(name, lin.out_features, lin.in_features, lin.bias is not None,
                                decomps[name].spectrum))
    allocation = get_allocator(config.alloc)(items, config.keep)
    reports = []
    for item in items:
        name, lin = item.name, modules[item.name]
        rank = allocation.ranks[name]
        weight = lin.weight.detach().to(torch.float64)
        spectrum = decomps[name].spectrum
        energy_total = float((spectrum.double() ** 2).sum()) or 1.0
        notes: dict[str, Any] = {}
        if rank is None:
            approx, energy_kept = weight, 1.0
        else:
            B, A = decomps[name].factors(rank)
            new = LowRankLinear.from_factors(
                B.to(lin.weight.dtype), A.to(lin.weight.dtype),
                None if lin.bias is None else lin.bias.detach(),
            ).to(lin.weight.device)
            if not (torch.isfinite(new.A).all() and torch.isfinite(new.B).all()):
                raise DataError(f"decomposition of '{name}' produced non-finite factors; "
                                "the module was left unchanged")
            approx = new.weight_product().detach().to(torch.float64)
            energy_kept = 1.0 - decomps[name].tail_energy(rank) / energy_total
            replace_module(model, name, new)
        right = decomps[name].right
        if hasattr(right, "num_floored"):
            notes["gram_eigenvalues_floored"] = right.num_floored
            notes["gram_condition"] = right.condition
        out_err = None
        if stats is not None:
            out_err = output_error(weight, approx, stats.site(name).gram.to(weight.device))
        reports.append(ModuleReport(
            name=name, out_features=item.out_features, in_features=item.in_features,
            rank=rank, params_before=item.dense_cost(), params_after=item.cost(rank),
            rel_output_error=out_err,
            rel_weight_error=float((weight - approx).norm() / weight.norm().clamp_min(1e-300)),
            energy_kept=energy_kept, spectrum=[float(s) for s in spectrum], notes=notes,
        ))
    return MethodOutcome(reports, allocation.to_dict(), config.keep,
                         allocation.params_before, allocation.params_after)
