"""Low-Rank Transformer (LRT) conversion, from the Greenformers thesis (Cahyawijaya, 2021;
Winata et al., "Lightweight and Efficient End-to-End Speech Recognition Using Low-Rank
Transformer", ICASSP 2020).

Every targeted linear ``n -> m`` becomes an encoder ``E (n -> r)`` followed by a decoder
``D (r -> m)`` (the "LED" unit), here a :class:`~lowrank.nn.LowRankLinear` at one chosen rank,
initialised from the truncated SVD (or randomly, for training from scratch); the converted
model is then fine-tuned end to end (:mod:`lowrank.finetune`). A layer where rank ``r`` would
not save parameters (``r (n + m) >= n m``) stays dense, like ``ignore_lower_equal_dim`` of the
``greenformer`` package.
"""

from __future__ import annotations

import math

from torch import nn

from ..nn import LowRankLinear
from ..nn.accounting import break_even_rank
from ..surgery import replace_module, select_linears


def low_rank_transformer(model: nn.Module, rank: int | float, *, init: str = "svd",
                         targets: list[str] | None = None, ignore: list[str] | None = None
                         ) -> dict[str, int | None]:
    """Convert ``model`` in place to an LRT; returns each targeted module's rank (None: dense).

    ``rank`` is an int, or a float in (0, 1] read as that fraction of each layer's
    ``min(in, out)``. ``init`` is ``"svd"`` (truncated SVD of the weight: at full rank the
    converted layer equals the original) or ``"random"``.
    """
    if init not in ("svd", "random"):
        raise ValueError(f"init must be 'svd' or 'random', got {init!r}")
    if isinstance(rank, bool) or not isinstance(rank, (int, float)) or rank <= 0 or (
            isinstance(rank, float) and rank > 1):
        raise ValueError(f"rank must be a positive int or a fraction in (0, 1], got {rank!r}")
    ranks: dict[str, int | None] = {}
    for name, lin in select_linears(model, targets, ignore).items():
        full = min(lin.in_features, lin.out_features)
        r = min(full, rank if isinstance(rank, int) else max(1, math.floor(rank * full)))
        if r >= break_even_rank(lin.out_features, lin.in_features) and r < full:
            ranks[name] = None
            continue
        if init == "svd":
            new = LowRankLinear.from_linear(lin, r)
        else:
            new = LowRankLinear(lin.in_features, lin.out_features, r, lin.bias is not None,
                                device=lin.weight.device, dtype=lin.weight.dtype)
        replace_module(model, name, new)
        ranks[name] = r
    return ranks
