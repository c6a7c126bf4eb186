"""Round-to-nearest (RTN) weight quantization with per-group scales.

The baseline weight quantizer that the GPTQ paper (Frantar et al., "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers", ICLR 2023) and EoRA
(arXiv 2410.21271) compare against. Symmetric, along the input dimension: each row of
``W`` (out x in) is cut into groups of ``group_size`` consecutive input columns (the last group
may be shorter), and each group gets one scale

    s = max |w| / q_max,      q_max = 2^(bits-1) - 1   (127 for int8, 7 for int4),
    code = clamp(round(w / s), -q_max, q_max),          w_hat = code * s,

so every entry is off by at most half a quantization step, ``|w - w_hat| <= s / 2``. A group
of zeros gets scale 0 and codes 0. The codes and scales are stored by
:class:`lowrank.nn.QuantizedLinear` (int4 packed two per byte).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.quantized import SUPPORTED_BITS, QuantizedLinear, dequantize, pack_int4, unpack_int4
from ..surgery import replace_module
from .base import (
    METHODS,
    Calibration,
    CompressionConfig,
    MethodOutcome,
    output_error,
)
from .result import ModuleReport

__all__ = ["RTN", "dequantize", "pack_int4", "quantize", "quantize_linear", "unpack_int4"]


def quantize(weight: torch.Tensor, bits: int = 4, group_size: int = 128,
             scale_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric round-to-nearest codes and per-group scales of ``weight`` (out x in).

    Returns ``(codes, scales)``: ``int8`` codes of shape (out, in) in ``[-q_max, q_max]`` and
    scales of shape (out, ceil(in / group_size)) in ``scale_dtype`` (default: the weight's
    floating dtype). The codes are rounded against the stored (cast) scales, so
    ``dequantize(codes, scales, group_size)`` is within half a step of ``weight``.
    """
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if weight.ndim != 2 or not weight.dtype.is_floating_point:
        raise ValueError(f"quantize expects a floating matrix (out x in), got {weight.dtype} "
                         f"of shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError("quantize: the weight has non-finite entries")
    scale_dtype = scale_dtype or weight.dtype
    out_features, in_features = weight.shape
    q_max = 2 ** (bits - 1) - 1
    w = weight.detach().to(torch.float64)
    groups = -(-in_features // group_size)
    padded = nn.functional.pad(w, (0, groups * group_size - in_features))  # zeros: no effect
    absmax = padded.reshape(out_features, groups, group_size).abs().amax(dim=2)
    scales = (absmax / q_max).to(scale_dtype)
    stored = scales.to(torch.float64)
    divisor = torch.where(stored > 0, stored, torch.ones_like(stored))
    expanded = divisor.repeat_interleave(group_size, dim=1)[:, :in_features]
    codes = torch.round(w / expanded).clamp_(-q_max, q_max)
    codes = torch.where(stored.repeat_interleave(group_size, dim=1)[:, :in_features] > 0,
                        codes, torch.zeros_like(codes))
    return codes.to(torch.int8), scales


def quantize_linear(linear: nn.Linear, bits: int = 4, group_size: int = 128) -> QuantizedLinear:
    """A :class:`QuantizedLinear` holding the RTN codes of ``linear`` (scales in its dtype)."""
    codes, scales = quantize(linear.weight.detach(), bits, group_size)
    bias = None if linear.bias is None else linear.bias.detach()
    return QuantizedLinear.from_codes(codes, scales, bits, group_size, bias)


def _check_bits_group(bits: Any, group_size: Any) -> None:
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ConfigError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ConfigError(f"group_size must be a positive integer (input columns per scale), "
                          f"got {group_size!r}")


@METHODS.register
@dataclass
class RTN(CompressionConfig):
    """Round-to-nearest symmetric weight quantization with per-group scales (see module doc).

    Each targeted ``nn.Linear`` becomes a :class:`~lowrank.nn.QuantizedLinear` storing
    ``bits``-bit codes and one scale per ``group_size`` input columns. Parameters (weights)
    are unchanged; bytes shrink to codes + scales + bias, which the report states per module.
    Data-free; with calibration statistics the report adds each module's output error.
    ``energy_kept`` is ``1 - ||W - W_hat||_F^2 / ||W||_F^2``.
    """

    method: ClassVar[str] = "rtn"

    bits: int = field(default=4, metadata={"help": "bits per weight code: 4 or 8"})
    group_size: int = field(default=128, metadata={
        "help": "input columns sharing one scale (the last group of a row may be shorter)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_bits_group(self.bits, self.group_size)

    def apply(self, model: nn.Module, modules: dict[str, nn.Module],
              calib: Calibration) -> MethodOutcome:
        stats = calib.stats
        reports = []
        for name, lin in modules.items():
            new = quantize_linear(lin, self.bits, self.group_size).to(lin.weight.device)
            weight = lin.weight.detach().to(torch.float64)
            approx = new.dense_weight().detach().to(torch.float64)
            bytes_before = sum(p.numel() * p.element_size() for p in lin.parameters())
            out_err = None
            if stats is not None and name in stats.module_site:
                out_err = output_error(weight, approx, stats.site(name).gram.to(weight.device))
            weight_err = float((weight - approx).norm() / weight.norm().clamp_min(1e-300))
            reports.append(ModuleReport(
                name=name, out_features=lin.out_features, in_features=lin.in_features,
                rank=None, params_before=new.num_parameters(),
                params_after=new.num_parameters(), rel_output_error=out_err,
                rel_weight_error=weight_err, energy_kept=max(0.0, 1.0 - weight_err ** 2),
                notes={"bits": self.bits, "group_size": self.group_size,
                       "bits_per_weight": new.bits_per_weight(),
                       "bytes_before": bytes_before, "bytes_after": new.num_bytes()},
            ))
            replace_module(model, name, new)
        total = sum(r.params_before for r in reports)
        allocation = {"bits": self.bits, "group_size": self.group_size,
                      "bytes_before": sum(r.notes["bytes_before"] for r in reports),
                      "bytes_after": sum(r.notes["bytes_after"] for r in reports)}
        return MethodOutcome(reports, allocation, None, total, total)
