"""SVD-LLM V2 allocation: per-type groups, truncation loss, ``1/log`` weighting (spec §5.1).

Wang et al., "SVD-LLM V2: Optimizing Singular Value Truncation for Large Language Model
Compression", NAACL 2025 (no code released). The paper's heterogeneous allocation:

1. Group the matrices by type (Q, K, V, O, gate, up, down) across layers.
2. For each matrix, the theoretical truncation loss at the target ratio,
   ``L = ||W X - W' X||_F = sqrt(sum_{i > k_u} s_i^2)`` over the whitened spectrum, where
   ``k_u = floor(keep * mn/(m+n))`` is the uniform (SVD-LLM) rank at the target.
3. Within a group, transform ``v = 1/log(L)`` and set each matrix's ratio to
   ``|G| * R * v / sum_G(v)`` so the group's mean ratio stays ``R``.

**The issue-#46 ambiguity and our reading.** The printed pseudocode computes
``L_min <- theoretical_loss(W, X, R)`` and then ``r <- len(L_G) * R * L_min / sum(L_G)``,
mixing the raw loss of one matrix with the sum of the transformed list, outside the loop over
the group's matrices (AIoT-MLSys-Lab/SVD-LLM issue #46; issue #35 adds that ``log L < 0`` for
``L < 1``). We read it as: ``R`` is the *compression* ratio (fraction removed, ``1 - keep``);
per matrix, inside the loop, ``removed_w = |G| * R * v_w / sum_G(v)`` with the *transformed*
value ``v_w`` in the numerator too, and the kept fraction (of the break-even rank, i.e. of the
weight's parameters) is ``1 - removed_w``. Every group's mean kept fraction is then exactly
``keep``. ``1/log`` is decreasing for ``L > 1``, so a larger loss removes less and keeps a
larger rank, as the paper states. (Normalising the *kept* fraction in proportion to ``v``
would do the opposite.)

Guards (ours; the paper's losses come from an unnormalised Gram ``X X^T`` over ~500k tokens,
so ``L >> e`` and none of them trigger): ``1/log`` needs ``L > 1`` and depends on the unit of
the loss (our Grams are sums over tokens too, so ``L`` grows with the calibration size). When a
group's smallest positive loss is below ``e``, the group's losses are rescaled by a common
factor so that it becomes ``e`` (a change of unit: ordering kept, every ``log >= 1``). A zero
loss counts as the group's smallest positive loss, a non-finite one as its largest; a group
without any positive finite loss keeps ``keep`` for every matrix.

Then: kept fractions are clipped to ``[0, 1]``, turned into ranks ``floor(p * mn/(m+n))`` and
clamped/aligned by the shared constraints; the global budget is fixed exactly by bisecting one
common multiplier ``c`` on every removed fraction (``c = 1`` is the group normalisation above;
clipping, integer ranks, biases and mixed shapes move it slightly), and the last integer gap is
closed by :func:`greedy_fill` towards each matrix's fraction at ``c``.

Group key: the part of the module name after its first all-digit component (the block index),
i.e. the module's position inside the repeated block: ``encoder.layer.3.attention.output.dense``
-> ``attention.output.dense``, ``model.layers.3.self_attn.q_proj`` -> ``self_attn.q_proj``.
Using only the last one or two components would merge BERT's ``attention.output.dense``
(hidden x hidden) with the FFN's ``output.dense`` (hidden x intermediate): both end in
``output.dense``. Names without a digit component group by their last component. A group of one
matrix gets exactly ``keep`` (V2 reduces to uniform where nothing repeats).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

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


def group_key(name: str) -> str:
    """The module's type: its name after the first all-digit component (see module docs)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit() and i + 1 < len(parts):
            return ".".join(parts[i + 1:])
    return parts[-1]


def truncation_loss(spectrum: torch.Tensor, rank: int) -> float:
    """``sqrt(sum_{i >= rank} s_i^2)``: the (whitened) output error of a rank-``rank`` cut."""
    s = spectrum.detach().to(torch.float64)
    return float((s[max(rank, 0):] ** 2).sum().sqrt())


def inverse_log(losses: Sequence[float]) -> list[float]:
    """``1/log(L)`` for one group, with the guards of the module docstring."""
    finite = [x for x in losses if math.isfinite(x) and x > 0]
    if not finite:
        return [1.0] * len(losses)
    smallest, largest = min(finite), max(finite)
    scale = max(1.0, math.e / smallest)
    out = []
    for x in losses:
        if not math.isfinite(x):
            x = largest
        elif x <= 0:
            x = smallest
        out.append(1.0 / math.log(x * scale))
    return out


@dataclass
class GroupFractions:
    """The group-normalised allocation before the budget fix."""

    groups: dict[str, list[str]]  # group key -> matrix names
    losses: dict[str, float]  # truncation loss at the uniform rank
    removed: dict[str, float]  # |G| * (1 - keep) * v / sum_G(v)
    uniform_ranks: dict[str, int]

    def kept(self, scale: float = 1.0) -> dict[str, float]:
        """Kept fraction of the break-even rank per matrix (unclipped at ``scale = 1``)."""
        return {name: 1.0 - scale * r for name, r in self.removed.items()}


def group_fractions(items: Sequence[BudgetItem], keep: float) -> GroupFractions:
    """Steps 1-3: groups, truncation losses at the uniform rank, normalised removed ratios."""
    groups: dict[str, list[BudgetItem]] = {}
    for it in items:
        groups.setdefault(group_key(it.name), []).append(it)
    losses, removed, uniform_ranks = {}, {}, {}
    for members in groups.values():
        for it in members:
            uniform_ranks[it.name] = math.floor(keep * it.break_even)
            losses[it.name] = truncation_loss(it.spectrum, uniform_ranks[it.name])
        values = inverse_log([losses[it.name] for it in members])
        total = sum(values)
        for it, v in zip(members, values, strict=True):
            removed[it.name] = len(members) * (1.0 - keep) * v / total
    return GroupFractions({k: [it.name for it in m] for k, m in groups.items()}, losses,
                          removed, uniform_ranks)


@ALLOCATORS.register
class SVDLLMV2(RankAllocator):
    """Group-normalised ``1/log(loss)`` allocation (SVD-LLM V2), fixed to the global budget.

    ``details`` holds the groups, the losses, each matrix's kept fraction after the group
    normalisation (``group_keep``: each group's mean equals ``keep``) and the multiplier
    ``scale`` on the removed fractions that met the budget.
    """

    name = "svdllm-v2"

    def allocate(self, items: Sequence[BudgetItem], keep: float, *,
                 constraints: RankConstraints = UNCONSTRAINED,
                 probe: Probe | None = None) -> Allocation:
        target = _target(items, keep, constraints)
        fr = group_fractions(items, keep)

        def scale_at(t: float) -> float:
            return math.inf if t <= 0 else (1.0 - t) / t  # t = 1/2 is the group normalisation

        def kept_at(scale: float) -> dict[str, float]:
            return {name: min(1.0, max(0.0, 1.0 - (0.0 if r == 0 else scale * r)))
                    for name, r in fr.removed.items()}

        def ranks_at(t: float) -> dict[str, int | None]:
            kept = kept_at(scale_at(t))
            return {it.name: constraints.snap(
                it, math.floor(kept[it.name] * it.break_even + 1e-9)) for it in items}

        t, ranks = bisect_parameter(items, target, ranks_at, constraints=constraints)
        scale = scale_at(t)
        goal = kept_at(scale)
        ranks = greedy_fill(items, ranks, target,
                            lambda it, k: goal[it.name] - k / it.break_even, constraints)
        details = {
            "groups": fr.groups,
            "truncation_loss": fr.losses,
            "uniform_rank": fr.uniform_ranks,
            "group_keep": fr.kept(),
            "scale": scale if math.isfinite(scale) else None,
        }
        return finish("svdllm-v2", items, ranks, keep, details, constraints)
