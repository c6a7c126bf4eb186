"""Magnitude pruning: unstructured (per matrix) and 2:4 semi-structured.

The magnitude baseline of the pruning literature (Han et al., "Learning both Weights and
Connections for Efficient Neural Networks", NeurIPS 2015; for LLMs and the 2:4 pattern, the
magnitude baseline in SparseGPT, Frantar & Alistarh, ICML 2023, and Wanda, Sun et al., ICLR
2024), which EoRA (arXiv 2410.21271) compensates among others.

* ``unstructured``: in each matrix, zero the ``round(sparsity * out * in)`` entries of smallest
  ``|w|`` (ties broken by position, so the count is exact).
* ``2:4``: in each row, cut the input columns into groups of 4 consecutive ones and keep the 2
  of largest ``|w|`` in each group (the pattern sparse tensor cores accelerate); needs
  ``in_features`` divisible by 4.

The pruned weight stays a dense ``nn.Linear`` with zeros: parameters and bytes are not reduced
unless the weight is later stored in a sparse format. The report states the nonzeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..errors import ConfigError, DataError
from .base import METHODS, Calibration, CompressionConfig, MethodOutcome, output_error
from .result import ModuleReport

PATTERNS = ("unstructured", "2:4")

__all__ = ["PATTERNS", "MagnitudePrune", "magnitude_mask", "prune_mask", "semi_structured_mask"]


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean keep-mask zeroing exactly ``round(sparsity * numel)`` smallest-``|w|`` entries."""
    if not 0 <= sparsity < 1:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity!r}")
    flat = weight.detach().abs().reshape(-1)
    drop = int(round(sparsity * flat.numel()))
    mask = torch.ones(flat.numel(), dtype=torch.bool, device=weight.device)
    if drop:
        # stable sort: among equal magnitudes the earlier position is dropped first
        order = torch.sort(flat, stable=True).indices
        mask[order[:drop]] = False
    return mask.reshape(weight.shape)


def semi_structured_mask(weight: torch.Tensor, keep: int = 2, group: int = 4) -> torch.Tensor:
    """Boolean keep-mask with the ``keep`` largest ``|w|`` of every ``group`` consecutive
    inputs of each row (``2:4`` by default); ``in_features`` must be divisible by ``group``."""
    if weight.ndim != 2:
        raise DataError(f"expected a matrix (out x in), got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    if not 0 < keep <= group:
        raise ConfigError(f"need 0 < keep <= group, got {keep}:{group}")
    if in_features % group:
        raise ConfigError(f"{keep}:{group} pruning needs in_features divisible by {group}, got "
                          f"{in_features}")
    blocks = weight.detach().abs().reshape(out_features, in_features // group, group)
    # stable descending sort: among equal magnitudes the earlier input is kept
    top = torch.sort(blocks, dim=2, descending=True, stable=True).indices[..., :keep]
    mask = torch.zeros_like(blocks, dtype=torch.bool).scatter_(2, top, True)
    return mask.reshape(out_features, in_features)


def prune_mask(weight: torch.Tensor, pattern: str, sparsity: float = 0.5) -> torch.Tensor:
    """Keep-mask for ``pattern`` ("unstructured" with ``sparsity``, or "2:4")."""
    if pattern == "unstructured":
        return magnitude_mask(weight, sparsity)
    if pattern == "2:4":
        return semi_structured_mask(weight, 2, 4)
    raise ConfigError(f"unknown pruning pattern {pattern!r}: expected one of {PATTERNS}")


def check_prune_fields(pattern: object, sparsity: object) -> float:
    """Validate ``pattern`` and ``sparsity`` (shared with EoRA's base); return the sparsity."""
    if pattern not in PATTERNS:
        raise ConfigError(f"pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or \
            not 0 <= float(sparsity) < 1:
        raise ConfigError(f"sparsity must be a fraction of weights removed in [0, 1), got "
                          f"{sparsity!r}")
    if pattern == "2:4" and float(sparsity) != 0.5:
        raise ConfigError(f"pattern '2:4' removes exactly half of the weights: sparsity must be "
                          f"0.5, got {sparsity}")
    return float(sparsity)


@METHODS.register
@dataclass
class MagnitudePrune(CompressionConfig):
    """Zero the smallest-magnitude weights of each targeted linear layer (see module doc).

    Layers stay dense ``nn.Linear`` modules holding zeros, so parameters and bytes are
    unchanged (a sparse storage format would be needed to save memory); each module's report
    gives ``nonzeros`` and the achieved ``sparsity`` in its notes, and the output error when
    calibration statistics are given. ``energy_kept`` is ``1 - ||W - W_p||_F^2 / ||W||_F^2``.
    """

    method: ClassVar[str] = "magnitude"

    sparsity: float = field(default=0.5, metadata={
        "help": "fraction of each matrix's weights set to zero, in [0, 1) ('2:4' needs 0.5)"})
    pattern: str = field(default="unstructured", metadata={
        "help": "'unstructured' (smallest |w| of the whole matrix) or '2:4' (2 largest |w| "
                "kept in every 4 consecutive inputs)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sparsity = check_prune_fields(self.pattern, self.sparsity)

    def apply(self, model: nn.Module, modules: dict[str, nn.Module],
              calib: Calibration) -> MethodOutcome:
        stats = calib.stats
        masks = {}
        for name, lin in modules.items():  # validate every module before changing any
            try:
                masks[name] = prune_mask(lin.weight, self.pattern, self.sparsity)
            except ConfigError as exc:
                raise ConfigError(f"cannot prune '{name}': {exc}") from exc
        reports = []
        for name, lin in modules.items():
            weight = lin.weight.detach().to(torch.float64).clone()
            with torch.no_grad():
                lin.weight.mul_(masks[name].to(lin.weight.dtype))
            pruned = lin.weight.detach().to(torch.float64)
            nonzeros = int(torch.count_nonzero(lin.weight))
            out_err = None
            if stats is not None and name in stats.module_site:
                out_err = output_error(weight, pruned, stats.site(name).gram.to(weight.device))
            weight_err = float((weight - pruned).norm() / weight.norm().clamp_min(1e-300))
            params = lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0)
            reports.append(ModuleReport(
                name=name, out_features=lin.out_features, in_features=lin.in_features,
                rank=None, params_before=params, params_after=params,
                rel_output_error=out_err, rel_weight_error=weight_err,
                energy_kept=max(0.0, 1.0 - weight_err ** 2),
                notes={"pattern": self.pattern, "nonzeros": nonzeros,
                       "sparsity": 1.0 - int(masks[name].sum()) / masks[name].numel(),
                       "storage": "dense (zeros stored; bytes not reduced)"},
            ))
        total = sum(r.params_before for r in reports)
        allocation = {"pattern": self.pattern, "sparsity": self.sparsity,
                      "nonzeros": sum(r.notes["nonzeros"] for r in reports),
                      "weights": sum(m.weight.numel() for m in modules.values())}
        return MethodOutcome(reports, allocation, None, total, total)
