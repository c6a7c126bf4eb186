"""Memory estimates for training runs: weights, gradients, optimizer state and projectors.

Follows the accounting of the GaLore paper (§4.2): an ``m x n`` weight with ``m <= n`` costs
``m n`` for the weight, ``m r`` for the projector and ``2 n r`` for the projected Adam moments,
against ``2 m n`` moments for AdamW. Gradients cost one full copy of the trainable weights, or
only the largest single parameter with per-layer updates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from . import projectors as pj


@dataclass
class MemoryEstimate:
    """Bytes of one training setup (all on one process)."""

    method: str
    weights: int
    gradients: int
    optimizer_state: int
    projector: int
    projected_state: int
    dense_state_of_projected: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_state + self.projector

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}

    def __str__(self) -> str:
        def mib(b: int) -> str:
            return f"{b / 2**20:.2f} MiB"

        ratio = (self.projected_state / self.dense_state_of_projected
                 if self.dense_state_of_projected else float("nan"))
        return (f"[{self.method}] weights {mib(self.weights)}, gradients {mib(self.gradients)}, "
                f"optimizer state {mib(self.optimizer_state)} (projected matrices: "
                f"{ratio:.1%} of AdamW's), projector {mib(self.projector)}, "
                f"total {mib(self.total)}")


def _group_list(model: nn.Module, optimizer_or_method: Any, rank: int | None,
                **kwargs: Any) -> tuple[str, list[dict]]:
    if isinstance(optimizer_or_method, torch.optim.Optimizer):
        name = type(optimizer_or_method).__name__
        return name, optimizer_or_method.param_groups
    if optimizer_or_method == "adamw":
        return "adamw", [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if optimizer_or_method in ("galore", "galore-svd", "galore-rsvd", "galore-dct"):
        from .galore import galore_groups

        if rank is None:
            raise ConfigError("estimate_memory(..., 'galore') needs rank=<int>")
        basis = optimizer_or_method.split("-")[1] if "-" in optimizer_or_method else "svd"
        return optimizer_or_method, galore_groups(model, rank=rank, basis=basis, **kwargs)
    raise ConfigError(f"optimizer_or_method must be a torch optimizer or one of 'adamw', "
                      f"'galore', 'galore-svd', 'galore-rsvd', 'galore-dct'; got "
                      f"{optimizer_or_method!r}")


def estimate_memory(model: nn.Module, optimizer_or_method: Any = "adamw", *,
                    rank: int | None = None, per_layer: bool = False,
                    state_dtype: torch.dtype | None = None, verbose: bool = False,
                    **kwargs: Any) -> MemoryEstimate:
    """Estimate training memory without running a step.

    ``optimizer_or_method`` is an optimizer (its groups are read: groups with ``rank`` are
    projected as :class:`~lowrank.optim.GaLoreAdamW` would) or a name (``"adamw"``,
    ``"galore"`` with ``rank=``). ``per_layer=True`` counts only the largest gradient (the
    per-layer update mode). ``state_dtype`` defaults to each parameter's dtype. Activations are
    not included. With ``verbose`` the estimate is printed.
    """
    name, groups = _group_list(model, optimizer_or_method, rank, **kwargs)
    weights = sum(t.numel() * t.element_size()
                  for t in list(model.parameters()) + list(model.buffers()))
    trainable = [p for p in model.parameters() if p.requires_grad]
    grad_sizes = [p.numel() * p.element_size() for p in trainable]
    gradients = (max(grad_sizes) if per_layer else sum(grad_sizes)) if grad_sizes else 0
    state = projector = projected = dense_equiv = 0
    for group in groups:
        r = group.get("rank")
        for p in group["params"]:
            size = (torch.empty((), dtype=state_dtype).element_size() if state_dtype
                    else p.element_size())
            if r is None or p.ndim != 2:
                state += 2 * p.numel() * size
                continue
            side = pj.choose_side(tuple(p.shape), group.get("proj_type", "std"))
            k = pj.effective_rank(tuple(p.shape), side, r)
            rows, cols = pj.projected_shape(tuple(p.shape), side, k)
            moments = 2 * rows * cols * size
            if group.get("inner", "adamw") == "sgd":
                moments = 0
            state += moments
            projected += moments
            dense_equiv += 2 * p.numel() * size
            for proj_dim in pj.basis_sizes(tuple(p.shape), side):
                if group.get("basis", "svd") == "dct":
                    projector += 4 * k  # int32 indices; the shared DCT matrices counted below
                else:
                    projector += k * proj_dim * p.element_size()
    if any(g.get("basis") == "dct" for g in groups if g.get("rank") is not None):
        sizes = set()
        for g in groups:
            if g.get("rank") is None:
                continue
            for p in g["params"]:
                side = pj.choose_side(tuple(p.shape), g.get("proj_type", "std"))
                sizes.update(pj.basis_sizes(tuple(p.shape), side))
        projector += sum(4 * s * s for s in sizes)  # one fp32 DCT matrix per distinct size
    est = MemoryEstimate(name, weights, gradients, state, projector, projected, dense_equiv)
    if verbose:
        print(est)
    return est
