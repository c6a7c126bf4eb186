"""WeLore allocation: one global threshold on min-max normalised weight spectra (data-free).

Jaiswal et al., "From GaLore to WeLore: How Low-Rank Weights Non-uniformly Emerge from Low-Rank
Gradients", arXiv 2407.11239 (spec §9). Every matrix's singular values are min-max normalised,
``s_hat = (s - s_min) / (s_max - s_min)``, and one threshold ``tau`` applies to all of them: a
matrix prunes the ``#{s_hat_i < tau}`` components below it and keeps the rest. Matrices whose
spectrum is heavy-tailed (a few large values, a long flat tail near ``s_min``) lose most of their
rank; matrices with a flat spectrum keep most of it, and then stay dense (below).

Differences from the paper, on purpose:

* **Budget unit.** WeLore picks ``tau`` for a *rank reduction* ``sum pruned / sum min(m, n)``
  (its "50% compressed" model is 50% rank reduction, spec §0.1); we bisect ``tau`` to meet the
  same *parameter* budget as every other allocator (``keep``), so WeLore can be compared with
  them at equal size. ``details`` reports both: ``tau``, ``rank_reduction`` (realised, dense
  matrices pruning nothing), ``rank_reduction_at_tau`` (the paper's figure: the threshold
  applied to every matrix, dense ones included) and the parameter keep of the allocation.
  :func:`threshold_for_rank_reduction` gives the paper's own rule (``tau`` for a rank
  reduction) for comparison.
* **LRC / N-LRC split.** A matrix becomes a low-rank component only where that saves
  parameters: a kept rank at or above the break-even rank ``mn/(m+n)`` leaves it dense (a
  non-low-rank component), whatever ``min_ratio`` says; WeLore's ``min_ratio`` (default 0:
  factorize whenever anything is pruned) is kept as an extra condition, pruned fraction
  ``> min_ratio``. With ``min_ratio >= 1 - k*/min(m, n)`` the two rules coincide (spec §9c).
* **Data-free even after whitening.** The threshold uses the plain weight spectrum
  (``BudgetItem.weight_spectrum``, which the method fills because :class:`WeLore` declares
  ``needs_weight_spectrum``), not the method's whitened one; the factors themselves are still
  the method's (e.g. SVD-LLM's whitened truncation at the chosen rank).

The integer gap left by the bisection is closed by un-pruning the components with the highest
normalised value first (the order a lower threshold would add them), ``align`` ranks at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ConfigError
from .base import ALLOCATORS, Probe, RankAllocator
from .budget import (
    UNCONSTRAINED,
    Allocation,
    BudgetItem,
    RankConstraints,
    bisect_parameter,
    finish,
    greedy_fill,
)
from .budget import target_params as _target


def normalised_spectrum(spectrum: torch.Tensor) -> torch.Tensor:
    """``(s - s_min) / (s_max - s_min)`` in float64; a flat (or non-finite) spectrum gives ones,
    so it is never pruned before ``tau`` reaches 1."""
    s = spectrum.detach().to(torch.float64).flatten()
    if s.numel() == 0:
        return s
    span = s.max() - s.min()
    if not (torch.isfinite(s).all() and span > 0):
        return torch.ones_like(s)
    return (s - s.min()) / span


def _pruned(normalised: torch.Tensor, tau: float) -> int:
    return int((normalised < tau).sum())


def threshold_for_rank_reduction(spectra: Sequence[torch.Tensor], reduction: float,
                                 iters: int = 60) -> float:
    """WeLore's own rule: the largest ``tau`` whose rank reduction ``sum #{s_hat < tau} /
    sum len(s)`` does not exceed ``reduction`` (in [0, 1])."""
    if not 0 <= reduction <= 1:
        raise ConfigError(f"rank reduction must be in [0, 1], got {reduction}")
    normed = [normalised_spectrum(s) for s in spectra]
    total = sum(s.numel() for s in normed)
    lo, hi = 0.0, 1.0 + 1e-12  # at tau > 1 every component is pruned
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if sum(_pruned(s, mid) for s in normed) <= reduction * total:
            lo = mid
        else:
            hi = mid
    return lo


@ALLOCATORS.register
@dataclass
class WeLore(RankAllocator):
    """Global threshold ``tau`` on normalised weight spectra, bisected to the parameter budget.

    Kept rank of a matrix: ``#{s_hat_i >= tau}``; it stays dense where that rank would not
    save parameters or where its pruned fraction is ``<= min_ratio``. Ranks are then clamped
    and aligned by ``constraints`` (a ``max_keep < 1`` factorizes would-be dense matrices at
    their largest allowed rank).
    """

    name: ClassVar[str] = "welore"
    needs_weight_spectrum: ClassVar[bool] = True  # the method fills BudgetItem.weight_spectrum

    min_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_ratio < 1:
            raise ConfigError(f"min_ratio must be in [0, 1) (pruned fraction below which a "
                              f"matrix stays dense), got {self.min_ratio}")

    def allocate(self, items: Sequence[BudgetItem], keep: float, *,
                 constraints: RankConstraints = UNCONSTRAINED,
                 probe: Probe | None = None) -> Allocation:
        target = _target(items, keep, constraints)
        normed = {it.name: normalised_spectrum(it.plain_spectrum) for it in items}

        def raw_rank(it: BudgetItem, tau: float) -> int | None:
            s = normed[it.name]
            pruned = _pruned(s, tau)
            if pruned / max(min(it.out_features, it.in_features), 1) <= self.min_ratio:
                return None  # a non-low-rank component: stays dense
            return s.numel() - pruned

        def ranks_at(t: float) -> dict[str, int | None]:
            tau = 1.0 - t  # larger t, lower threshold, more rank kept: cost increases with t
            return {it.name: constraints.snap(it, raw_rank(it, tau)) for it in items}

        def next_value(it: BudgetItem, k: int) -> float:
            s = normed[it.name]
            return float(s[k]) if k < s.numel() else -1.0

        t, ranks = bisect_parameter(items, target, ranks_at, constraints=constraints)
        ranks = greedy_fill(items, ranks, target, next_value, constraints)
        tau = 1.0 - t

        full = sum(min(it.out_features, it.in_features) for it in items)
        realised = sum(min(it.out_features, it.in_features) - ranks[it.name] for it in items
                       if ranks[it.name] is not None)
        nominal = sum(_pruned(normed[it.name], tau) for it in items)
        details = {
            "tau": tau,
            "rank_reduction": realised / full if full else 0.0,
            "rank_reduction_at_tau": nominal / full if full else 0.0,
            "dense": [it.name for it in items if ranks[it.name] is None],
            "min_ratio": self.min_ratio,
            "spectrum": "weight" if all(it.weight_spectrum is not None for it in items)
            else "method",
        }
        return finish("welore", items, ranks, keep, details, constraints)
