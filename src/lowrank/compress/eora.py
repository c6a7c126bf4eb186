"""EoRA: eigenspace low-rank compensation of a compression error (Liu et al., NVIDIA, "EoRA:
Training-free Compensation for Compressed LLM with Eigenspace Low-Rank Approximation",
arXiv 2410.21271).

For each targeted layer with weight ``W`` (out x in) and calibration input Gram ``G = X X^T``:

1. compress the weight with a base compressor: ``W_c`` (RTN int4/int8 quantization,
   :mod:`lowrank.compress.quant`, or magnitude pruning, :mod:`lowrank.compress.prune`);
2. take the error ``dW = W - W_c`` (float64);
3. with ``S`` the eigen root of ``G`` (``G = Q L Q^T``, ``S = Q L^{1/2}``, eigenvalues floored),
   truncate ``dW S`` to rank ``r`` by SVD, ``U_r E_r V_r^T``, and map back:
   ``B = U_r E_r^{1/2}``, ``A = E_r^{1/2} V_r^T S^{-1}``;
4. serve ``y = W_c x + b + B (A x)`` (:class:`lowrank.nn.ResidualLowRankLinear`).

Step 3 is the whitened low-rank primitive (SVD-LLM's truncation) applied to ``dW``, so
``||(dW - B A) X||_F`` is the smallest any rank-``r`` correction achieves, and its square is the
tail of the squared whitened spectrum of ``dW``. The correction adds ``r (in + out)``
parameters per layer; :func:`lowrank.io.peft.save_eora_adapter` exports it as a PEFT LoRA
adapter (scaling 1) over the compressed base model.

Statistics come from one pass over the original model (the Gram of the inputs each layer sees
there), not from the compressed upstream layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..calib.stats import CalibrationStats
from ..errors import ConfigError, DataError
from ..linalg import whitened_svd
from ..nn import ResidualLowRankLinear, dense_weight_of
from ..surgery import replace_module
from .base import (
    METHODS,
    Calibration,
    CompressionConfig,
    MethodOutcome,
    output_error,
)
from .prune import check_prune_fields, prune_mask
from .quant import quantize_linear
from .result import ModuleReport

BASES = ("quant-int8", "quant-int4", "prune-unstructured", "prune-2:4", "none")


def _copy_linear(lin: nn.Linear, weight: torch.Tensor) -> nn.Linear:
    new = nn.Linear(lin.in_features, lin.out_features, lin.bias is not None,
                    device=lin.weight.device, dtype=lin.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
    return new


@METHODS.register
@dataclass
class EoRA(CompressionConfig):
    """Compress each targeted layer with ``base``, then add the output-optimal rank-``rank``
    correction of the compression error (see the module docstring for the maths).

    ``base``: ``quant-int4`` / ``quant-int8`` (round-to-nearest, ``group_size`` inputs per
    scale), ``prune-unstructured`` (magnitude, ``sparsity``), ``prune-2:4`` (2 of every 4
    inputs kept), or ``none`` (no base compression: the correction is exactly zero, a
    control). Each module's report gives the output error of ``W_c + B A`` against ``W`` and,
    in ``notes``, the uncompensated ``base_rel_output_error``, bits and bytes. Parameters after
    = the base's weights (codes count as weights) + the correction's ``r (in + out)``.
    """

    method: ClassVar[str] = "eora"
    statistics: ClassVar[frozenset[str]] = frozenset({"gram"})
    block_local: ClassVar[bool] = True

    rank: int | float = field(default=32, metadata={
        "help": "rank of the correction: an int, or a float in (0, 1] = fraction of "
                "min(in, out) per matrix; capped at min(in, out)"})
    base: str = field(default="quant-int4", metadata={
        "help": "compression to compensate: quant-int4, quant-int8, prune-unstructured, "
                "prune-2:4 or none"})
    floor: float = field(default=1e-6, metadata={
        "help": "eigenvalue floor of the Gram, relative to its largest eigenvalue"})
    group_size: int = field(default=128, metadata={
        "help": "quant bases: input columns sharing one scale"})
    sparsity: float = field(default=0.5, metadata={
        "help": "prune-unstructured base: fraction of each matrix's weights set to zero"})

    def __post_init__(self) -> None:
        super().__post_init__()
        rank = self.rank
        if isinstance(rank, bool) or not isinstance(rank, (int, float)):
            raise ConfigError(f"rank must be a positive int or a fraction in (0, 1], got "
                              f"{rank!r}")
        if isinstance(rank, int) and rank < 1:
            raise ConfigError(f"rank must be a positive int or a fraction in (0, 1], got {rank}")
        if isinstance(rank, float) and not 0 < rank <= 1:
            raise ConfigError(f"a float rank is a fraction of min(in, out) in (0, 1], got "
                              f"{rank}")
        if self.base not in BASES:
            raise ConfigError(f"unknown base '{self.base}': expected one of {', '.join(BASES)}")
        if not 0 < self.floor < 1:
            raise ConfigError(f"floor must be in (0, 1), got {self.floor}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or \
                self.group_size < 1:
            raise ConfigError(f"group_size must be a positive integer (input columns per "
                              f"scale), got {self.group_size!r}")
        pattern = "2:4" if self.base == "prune-2:4" else "unstructured"
        if self.base == "prune-2:4" and self.sparsity != 0.5:
            raise ConfigError(f"base 'prune-2:4' removes exactly half of the weights: sparsity "
                              f"must be 0.5, got {self.sparsity}")
        self.sparsity = check_prune_fields(pattern, self.sparsity)

    @property
    def bits(self) -> int | None:
        """Weight bits of a quantizing base, ``None`` for the others."""
        return {"quant-int8": 8, "quant-int4": 4}.get(self.base)

    def rank_for(self, out_features: int, in_features: int) -> int:
        full = min(out_features, in_features)
        if isinstance(self.rank, float):
            return max(1, min(full, round(self.rank * full)))
        return min(full, self.rank)

    def compress_base(self, name: str, lin: nn.Linear) -> nn.Module:
        """The base compression of ``lin`` as a new module computing ``W_c x + b``."""
        if self.bits is not None:
            return quantize_linear(lin, self.bits, self.group_size).to(lin.weight.device)
        weight = lin.weight.detach()
        if self.base == "none":
            return _copy_linear(lin, weight)
        pattern = "2:4" if self.base == "prune-2:4" else "unstructured"
        try:
            mask = prune_mask(weight, pattern, self.sparsity)
        except ValueError as exc:
            raise ConfigError(f"cannot prune '{name}': {exc}") from exc
        return _copy_linear(lin, weight * mask.to(weight.dtype))

    def apply(self, model: nn.Module, modules: dict[str, nn.Module],
              calib: Calibration) -> MethodOutcome:
        stats = calib.stats
        if stats is None:
            raise DataError("EoRA needs calibration statistics (the input Gram of each layer)")
        if self.base == "prune-2:4":  # fail before changing anything
            bad = [n for n, m in modules.items() if m.in_features % 4]
            if bad:
                raise ConfigError(f"base 'prune-2:4' needs in_features divisible by 4; "
                                  f"{bad[0]} has {modules[bad[0]].in_features}")
        new_modules: dict[str, nn.Module] = {}
        reports = []
        for name, lin in modules.items():  # compute every correction before replacing any
            new_modules[name], report = self._compensate(name, lin, stats)
            reports.append(report)
        for name, new in new_modules.items():
            replace_module(model, name, new)
        before = sum(r.params_before for r in reports)
        after = sum(r.params_after for r in reports)
        allocation: dict[str, Any] = {
            "rank": self.rank, "base": self.base, "bits": self.bits,
            "group_size": self.group_size if self.bits is not None else None,
            "sparsity": self.sparsity if self.base.startswith("prune") else None,
            "compensation_params": sum(r.notes["compensation_params"] for r in reports),
            "bytes_before": sum(r.notes["bytes_before"] for r in reports),
            "bytes_after": sum(r.notes["bytes_after"] for r in reports),
        }
        return MethodOutcome(reports, allocation, None, before, after)

    def _compensate(self, name: str, lin: nn.Linear, stats: CalibrationStats
                    ) -> tuple[ResidualLowRankLinear, ModuleReport]:
        weight = lin.weight.detach().to(torch.float64)
        base = self.compress_base(name, lin)
        compressed = dense_weight_of(base).detach().to(torch.float64)
        root = stats.gram_root(name, self.floor)
        device = root.eigenvectors.device
        dec = whitened_svd((weight - compressed).to(device), root)
        rank = self.rank_for(lin.out_features, lin.in_features)
        B, A = dec.factors(rank)
        dtype = lin.weight.dtype
        new = ResidualLowRankLinear.from_factors(base, B.to(lin.weight.device, dtype),
                                                 A.to(lin.weight.device, dtype))
        if not (torch.isfinite(new.A).all() and torch.isfinite(new.B).all()):
            raise DataError(f"EoRA compensation of '{name}' produced non-finite factors; the "
                            "model was left unchanged")
        final = new.dense_weight().detach().to(torch.float64)
        gram = stats.site(name).gram.to(weight.device)
        spectrum = dec.spectrum
        total = float((spectrum.double() ** 2).sum())
        energy_kept = 1.0 - dec.tail_energy(rank) / total if total > 0 else 1.0
        bytes_before = sum(p.numel() * p.element_size() for p in lin.parameters())
        bias_bytes = 0 if lin.bias is None else lin.bias.numel() * lin.bias.element_size()
        dense_bits = torch.finfo(dtype).bits
        weight_bits = self.bits if self.bits is not None else dense_bits
        notes: dict[str, Any] = {
            "base": self.base,
            "base_rel_output_error": output_error(weight, compressed, gram),
            "base_rel_weight_error": float((weight - compressed).norm()
                                           / weight.norm().clamp_min(1e-300)),
            "weight_bits": weight_bits,
            "compensation_bits": dense_bits,
            "compensation_params": new.correction_parameters(),
            "bytes_before": bytes_before,
            "bytes_after": new.num_bytes(),
            "bits_per_weight": 8 * (new.num_bytes() - bias_bytes) / lin.weight.numel(),
            "gram_eigenvalues_floored": root.num_floored,
            "gram_condition": root.condition,
        }
        if self.bits is not None:
            notes["group_size"] = self.group_size
        if self.base.startswith("prune"):
            notes["nonzeros"] = int(torch.count_nonzero(compressed))
        if isinstance(self.rank, int) and rank < self.rank:
            notes["rank_capped_at"] = rank
        report = ModuleReport(
            name=name, out_features=lin.out_features, in_features=lin.in_features, rank=rank,
            params_before=lin.weight.numel() + (0 if lin.bias is None else lin.bias.numel()),
            params_after=new.num_parameters(),
            rel_output_error=output_error(weight, final, gram),
            rel_weight_error=float((weight - final).norm() / weight.norm().clamp_min(1e-300)),
            energy_kept=energy_kept, spectrum=[float(s) for s in spectrum], notes=notes,
        )
        return new, report
