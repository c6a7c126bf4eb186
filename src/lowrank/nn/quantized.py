"""``QuantizedLinear``: a linear layer whose weight is stored as integer codes + group scales.

Storage format (the ``lowrank`` checkpoint and :func:`dequantize` agree on it):

* ``qweight``: the codes. 8 bits: ``int8`` of shape (out, in), values in ``[-127, 127]``.
  4 bits: ``uint8`` of shape (out, ceil(in / 2)), two codes per byte: input column ``2j`` in
  the low nibble and ``2j + 1`` in the high nibble, each stored as ``code + 8`` (codes in
  ``[-7, 7]``; an odd last column is padded with code 0).
* ``scales``: float, shape (out, ceil(in / group_size)); group ``g`` of row ``i`` covers input
  columns ``[g * group_size, (g + 1) * group_size)``, the last group possibly shorter.
* ``weight = codes * scales`` (each scale repeated over its group), so the layer computes
  ``y = (codes * scales) x + b``.

Codes and scales are buffers (they are not trained), so they are in the state dict and in
:func:`lowrank.nn.count_bytes`; :meth:`QuantizedLinear.num_parameters` counts the weights they
encode. The rounding that produces
the codes (round-to-nearest) lives in :mod:`lowrank.compress.quant`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .kinds import register_module_kind
from .manifest import BIAS, DTYPE, choice, positive
from .protocol import StructuredLinear

SUPPORTED_BITS = (4, 8)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack integer codes in ``[-8, 7]`` (shape (..., n)) two per ``uint8`` (..., ceil(n/2))."""
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise ValueError(f"pack_int4 expects integer codes, got {codes.dtype}")
    if codes.numel() and (int(codes.min()) < -8 or int(codes.max()) > 7):
        raise ValueError("pack_int4: codes must lie in [-8, 7]")
    unsigned = (codes.to(torch.int16) + 8).to(torch.uint8)
    if unsigned.shape[-1] % 2:
        pad = torch.full((*unsigned.shape[:-1], 1), 8, dtype=torch.uint8, device=codes.device)
        unsigned = torch.cat([unsigned, pad], dim=-1)
    return unsigned[..., 0::2] | (unsigned[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: ``int8`` codes of shape (..., n)."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_int4 expects uint8 bytes, got {packed.dtype}")
    if packed.shape[-1] != (n + 1) // 2:
        raise ValueError(f"unpack_int4: {packed.shape[-1]} bytes per row cannot hold {n} codes")
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=-1).flatten(-2)[..., :n]


def num_groups(in_features: int, group_size: int) -> int:
    return math.ceil(in_features / group_size)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """``codes * scales`` with each scale repeated over its group of input columns.

    ``codes`` (out, in) integers, ``scales`` (out, ceil(in / group_size)); the result has the
    scales' dtype. The last group may be shorter than ``group_size``.
    """
    out_features, in_features = codes.shape
    if scales.shape != (out_features, num_groups(in_features, group_size)):
        raise ValueError(f"scales of shape {tuple(scales.shape)} do not fit codes of shape "
                         f"{tuple(codes.shape)} with group_size {group_size}")
    expanded = scales.repeat_interleave(group_size, dim=1)[:, :in_features]
    return codes.to(scales.dtype) * expanded


@register_module_kind
class QuantizedLinear(StructuredLinear):
    """Linear map whose weight is ``bits``-bit integer codes times per-group float scales.

    The forward pass dequantizes the weight (in the scales' dtype) and applies a dense matmul:
    the saving is in storage (:meth:`num_bytes`), not in compute.
    """

    manifest_fields = (positive("in_features"), positive("out_features"),
                       choice("bits", SUPPORTED_BITS), positive("group_size"), BIAS, DTYPE)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int = 4,
        group_size: int = 128,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if min(in_features, out_features) < 1:
            raise ValueError(f"QuantizedLinear needs positive sizes, got in={in_features}, "
                             f"out={out_features}")
        if bits not in SUPPORTED_BITS:
            raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        dtype = dtype or torch.get_default_dtype()
        if bits == 8:
            codes = torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
        else:
            codes = torch.full((out_features, (in_features + 1) // 2), 0x88, dtype=torch.uint8,
                               device=device)
        self.register_buffer("qweight", codes)
        self.register_buffer("scales", torch.zeros(
            out_features, num_groups(in_features, group_size), dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) \
            if bias else None

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int,
                   bias: torch.Tensor | None = None) -> QuantizedLinear:
        """Build from unpacked integer codes (out, in) and scales (copied, in scales' dtype)."""
        if codes.ndim != 2 or codes.dtype.is_floating_point:
            raise ValueError(f"codes must be an integer matrix (out x in), got "
                             f"{codes.dtype} of shape {tuple(codes.shape)}")
        out_features, in_features = codes.shape
        layer = cls(in_features, out_features, bits, group_size, bias is not None,
                    device=scales.device, dtype=scales.dtype)
        limit = 2 ** (bits - 1) - 1
        if codes.numel() and (int(codes.min()) < -limit or int(codes.max()) > limit):
            raise ValueError(f"{bits}-bit codes must lie in [-{limit}, {limit}]")
        if scales.shape != layer.scales.shape:
            raise ValueError(f"scales of shape {tuple(scales.shape)} do not fit a "
                             f"{out_features}x{in_features} layer with group_size {group_size}: "
                             f"expected {tuple(layer.scales.shape)}")
        with torch.no_grad():
            layer.qweight.copy_(codes.to(torch.int8) if bits == 8 else pack_int4(codes))
            layer.scales.copy_(scales)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    def codes(self) -> torch.Tensor:
        """The integer codes, unpacked: ``int8`` of shape (out, in)."""
        if self.bits == 8:
            return self.qweight
        return unpack_int4(self.qweight, self.in_features)

    def dense_weight(self) -> torch.Tensor:
        """The represented weight ``codes * scales`` (out x in), in the scales' dtype."""
        return dequantize(self.codes(), self.scales, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.dense_weight(), self.bias)

    def num_parameters(self) -> int:
        """Weights (one per code, not counting scales) plus the bias."""
        return self.out_features * self.in_features + (
            self.out_features if self.bias is not None else 0)

    def bits_per_weight(self) -> float:
        """Storage per weight, scales included (bias excluded)."""
        scale_bits = self.scales.numel() * self.scales.element_size() * 8
        return self.bits + scale_bits / (self.out_features * self.in_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={self.bits}, group_size={self.group_size}, bias={self.bias is not None}")
