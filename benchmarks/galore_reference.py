"""The galore-torch reference (Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient
Low-Rank Projection", ICML 2024) as a row of the pretraining benchmark.

Runs ``lowrank.optim.pretrain.pretrain`` with galore-torch's ``GaLoreAdamW`` on the same param
groups as our GaLore-svd (``pip install galore-torch``), times its basis computation
(``GaLoreProjector.get_orthogonal_matrix``, patched for the run) and counts its projector
matrices, which galore-torch keeps as objects in the optimizer state, with the state bytes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from lowrank.optim import galore_groups
from lowrank.optim.pretrain import PretrainConfig, PretrainResult, pretrain

#: The benchmark's name of the reference row.
METHOD = "galore-torch"


def available() -> bool:
    """Whether galore-torch is installed."""
    try:
        import galore_torch  # noqa: F401
    except ImportError:
        return False
    return True


class ReferenceOptimizer:
    """``optimizer(model, cfg)`` for :func:`pretrain`: galore-torch's ``GaLoreAdamW`` on our
    GaLore param groups (without our ``basis`` key); keeps the optimizer it built."""

    def __init__(self) -> None:
        self.optimizer: torch.optim.Optimizer | None = None

    def __call__(self, model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
        from galore_torch import GaLoreAdamW

        groups = galore_groups(model, rank=cfg.rank, update_proj_gap=cfg.update_proj_gap,
                               scale=cfg.scale)
        for g in groups:
            g.pop("basis", None)
        self.optimizer = GaLoreAdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                                     weight_decay=cfg.weight_decay)
        return self.optimizer

    def projector_bytes(self) -> int:
        """Bytes of the projection matrices held by galore-torch's ``GaLoreProjector``s."""
        from galore_torch.galore_projector import GaLoreProjector

        total = 0
        for state in self.optimizer.state.values():
            for value in state.values():
                if isinstance(value, GaLoreProjector) and value.ortho_matrix is not None:
                    mats = value.ortho_matrix if isinstance(value.ortho_matrix, list) \
                        else [value.ortho_matrix]
                    total += sum(t.numel() * t.element_size() for t in mats)
        return total


@dataclasses.dataclass
class RefreshClock:
    """Wall time and count of galore-torch's basis computations."""

    seconds: float = 0.0
    count: int = 0


@contextmanager
def timed_refreshes() -> Iterator[RefreshClock]:
    """Patch ``GaLoreProjector.get_orthogonal_matrix`` to time every call, restored after."""
    from galore_torch.galore_projector import GaLoreProjector

    clock, orig = RefreshClock(), GaLoreProjector.get_orthogonal_matrix

    def timed(proj, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        start = time.perf_counter()
        out = orig(proj, *args, **kwargs)
        clock.seconds += time.perf_counter() - start
        clock.count += 1
        return out

    GaLoreProjector.get_orthogonal_matrix = timed
    try:
        yield clock
    finally:
        GaLoreProjector.get_orthogonal_matrix = orig


def pretrain_reference(cfg: PretrainConfig, data: tuple[torch.Tensor, torch.Tensor]
                       ) -> PretrainResult:
    """One pretraining run with galore-torch (``cfg.method`` is ignored: the model stays dense
    and the optimizer is the reference's); refresh times and projector bytes are its own."""
    reference = ReferenceOptimizer()
    with timed_refreshes() as clock:
        result = pretrain(dataclasses.replace(cfg, method="galore"), data, optimizer=reference)
    extra = reference.projector_bytes()
    result.config["method"] = METHOD
    result.optimizer_state_bytes += extra
    result.projector_bytes += extra
    result.refresh_seconds, result.refresh_count = clock.seconds, clock.count
    return result
