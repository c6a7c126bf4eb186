"""``Tucker2Conv2d``: a convolution as 1x1 -> k x k core -> 1x1 (Tucker-2 of its kernel).

Kim et al., "Compression of Deep Convolutional Neural Networks for Fast and Low Power Mobile
Applications" (ICLR 2016): the kernel ``W[o, c, i, j]`` is Tucker-decomposed along its two
channel modes, ``W = G ×_out U_out ×_in U_in`` with ``G`` of shape ``(r_out, r_in, k, k)``, so
the layer is a 1x1 projection to ``r_in`` channels, a ``k x k`` convolution ``r_in -> r_out``
(stride, padding and dilation of the original), and a 1x1 expansion to ``out`` with the bias.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .kinds import register_module_kind
from .manifest import BIAS, DTYPE, pair, positive
from .protocol import StructuredConv2d


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def check_plain_conv(conv: nn.Module, what: str) -> None:
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"{what} expects an nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"{what} supports groups=1, zero padding given as numbers; got "
                         f"groups={conv.groups}, padding={conv.padding!r}, "
                         f"padding_mode={conv.padding_mode!r}")


def tucker2_ranks(in_channels: int, out_channels: int, kernel: tuple[int, int],
                  keep: float) -> tuple[int, int]:
    """Ranks ``(r_in, r_out) = rho * (in, out)`` with the largest ``rho`` whose parameter count
    ``in r_in + r_in r_out k_h k_w + r_out out`` is at most ``keep`` of the dense kernel."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep!r}")
    kk = kernel[0] * kernel[1]
    budget = keep * in_channels * out_channels * kk
    a = in_channels * out_channels * kk
    b = in_channels ** 2 + out_channels ** 2
    rho = (-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)  # a rho^2 + b rho = budget
    r_in = max(1, min(in_channels, int(rho * in_channels)))
    r_out = max(1, min(out_channels, int(rho * out_channels)))
    return r_in, r_out


@register_module_kind
class Tucker2Conv2d(StructuredConv2d):
    """Conv2d ``in -> out`` through channel ranks ``(rank_in, rank_out)``; trainable from
    scratch (a priori) or built from a trained convolution by :meth:`from_conv`."""

    manifest_fields = (positive("in_channels"), positive("out_channels"), pair("kernel_size"),
                       positive("rank_in"), positive("rank_out"), pair("stride"),
                       pair("padding", zero=True), pair("dilation"), BIAS, DTYPE)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 rank_in: int, rank_out: int, stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                 bias: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not (1 <= rank_in <= in_channels and 1 <= rank_out <= out_channels):
            raise ValueError(f"ranks must satisfy 1 <= rank_in <= {in_channels} and 1 <= "
                             f"rank_out <= {out_channels}, got ({rank_in}, {rank_out})")
        kw = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.rank_in, self.rank_out = rank_in, rank_out
        self.first = nn.Conv2d(in_channels, rank_in, 1, bias=False, **kw)
        self.core = nn.Conv2d(rank_in, rank_out, self.kernel_size, stride=self.stride,
                              padding=self.padding, dilation=self.dilation, bias=False, **kw)
        self.last = nn.Conv2d(rank_out, out_channels, 1, bias=bias, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.core(self.first(x)))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, keep: float | None = None,
                  ranks: tuple[int, int] | None = None, n_iter: int = 10) -> Tucker2Conv2d:
        """Tucker-2 (HOSVD + ``n_iter`` HOOI sweeps on the two channel modes) of ``conv``'s
        kernel, at ``ranks=(r_in, r_out)`` or at the ranks a ``keep`` fraction allows.
        Full ranks reproduce the convolution exactly."""
        check_plain_conv(conv, "Tucker2Conv2d.from_conv")
        out_c, in_c, kh, kw = conv.weight.shape
        if ranks is None:
            if keep is None:
                raise ValueError("pass keep (fraction of parameters) or ranks=(r_in, r_out)")
            ranks = tucker2_ranks(in_c, out_c, (kh, kw), keep)
        r_in, r_out = int(ranks[0]), int(ranks[1])
        w = conv.weight.detach().to(torch.float64)
        u_out, u_in = _tucker2(w, r_in, r_out, n_iter)
        core = torch.einsum("ocij,or,cs->rsij", w, u_out, u_in)
        layer = cls(in_c, out_c, (kh, kw), r_in, r_out, conv.stride, conv.padding,
                    conv.dilation, conv.bias is not None, device=conv.weight.device,
                    dtype=conv.weight.dtype)
        dt = conv.weight.dtype
        with torch.no_grad():
            layer.first.weight.copy_(u_in.T.reshape(r_in, in_c, 1, 1).to(dt))
            layer.core.weight.copy_(core.to(dt))
            layer.last.weight.copy_(u_out.reshape(out_c, r_out, 1, 1).to(dt))
            if conv.bias is not None:
                layer.last.bias.copy_(conv.bias)
        return layer

    def dense_weight(self) -> torch.Tensor:
        """The represented dense kernel ``(out, in, k_h, k_w)``."""
        return torch.einsum("rsij,or,sc->ocij", self.core.weight, self.last.weight[:, :, 0, 0],
                            self.first.weight[:, :, 0, 0])

    @property
    def bias(self) -> torch.Tensor | None:
        return self.last.bias

    def flops(self, height: int, width: int) -> int:
        """Multiply-adds x 2 for one input image of ``height x width``."""
        kh, kw = self.kernel_size
        oh = (height + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        ow = (width + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        return 2 * (height * width * self.in_channels * self.rank_in
                    + oh * ow * self.rank_in * self.rank_out * kh * kw
                    + oh * ow * self.rank_out * self.out_channels)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"ranks=({self.rank_in}, {self.rank_out}), stride={self.stride}, "
                f"padding={self.padding}")


def _tucker2(w: torch.Tensor, r_in: int, r_out: int, n_iter: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal channel factors of a 4-way kernel by HOSVD + HOOI on modes 0 and 1."""
    out_c, in_c = w.shape[:2]

    def lead(mat: torch.Tensor, r: int) -> torch.Tensor:
        return torch.linalg.svd(mat, full_matrices=False)[0][:, :r]

    u_out = lead(w.reshape(out_c, -1), r_out)
    u_in = lead(w.transpose(0, 1).reshape(in_c, -1), r_in)
    if r_in < in_c or r_out < out_c:
        for _ in range(n_iter):
            u_out = lead(torch.einsum("ocij,cs->osij", w, u_in).reshape(out_c, -1), r_out)
            u_in = lead(torch.einsum("ocij,or->crij", w, u_out).reshape(in_c, -1), r_in)
    return u_out, u_in
