"""``CPConv2d``: a convolution as a chain of one-way filters (CP of its kernel).

``W[o, c, i, j] = sum_r A[o, r] B[c, r] H[i, r] V[j, r]``: a 1x1 projection to ``R`` channels
(``B``), a depthwise ``k_h x 1`` filter (``H``), a depthwise ``1 x k_w`` filter (``V``) and a
1x1 expansion (``A``, with the bias). Lebedev et al., "Speeding-up Convolutional Neural Networks
Using Fine-tuned CP-Decomposition" (ICLR 2015) build it from a trained kernel; Boukraichi,
Akkari, Casenave & Ryckelynck, "A priori compression of convolutional neural networks for wave
simulators", train the same one-way-filter chain from scratch. Parameters drop from
``out in k_h k_w`` to ``R (out + in + k_h + k_w)``.
"""

from __future__ import annotations

import torch
from torch import nn

from .kinds import dtype_name, parse_dtype, positive_int, register_module_kind
from .tucker_conv import _pair, check_plain_conv, pair_entry


def cp_rank_for_keep(in_channels: int, out_channels: int, kernel: tuple[int, int],
                     keep: float) -> int:
    """Largest ``R`` with ``R (in + out + k_h + k_w) <= keep * in * out * k_h * k_w``."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep!r}")
    dense = in_channels * out_channels * kernel[0] * kernel[1]
    return max(1, int(keep * dense / (in_channels + out_channels + kernel[0] + kernel[1])))


@register_module_kind
class CPConv2d(nn.Module):
    """Conv2d ``in -> out`` of CP rank ``rank``; trainable from scratch or from
    :meth:`from_conv`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 rank: int, stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                 bias: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be a positive int, got {rank}")
        kw = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels, self.rank = in_channels, out_channels, rank
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        kh, kwid = self.kernel_size
        self.first = nn.Conv2d(in_channels, rank, 1, bias=False, **kw)
        self.vertical = nn.Conv2d(rank, rank, (kh, 1), stride=(self.stride[0], 1),
                                  padding=(self.padding[0], 0), dilation=(self.dilation[0], 1),
                                  groups=rank, bias=False, **kw)
        self.horizontal = nn.Conv2d(rank, rank, (1, kwid), stride=(1, self.stride[1]),
                                    padding=(0, self.padding[1]),
                                    dilation=(1, self.dilation[1]), groups=rank, bias=False,
                                    **kw)
        self.last = nn.Conv2d(rank, out_channels, 1, bias=bias, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.horizontal(self.vertical(self.first(x))))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(A, B, H, V)`` of shapes ``(out, R), (in, R), (k_h, R), (k_w, R)``."""
        return (self.last.weight[:, :, 0, 0], self.first.weight[:, :, 0, 0].T,
                self.vertical.weight[:, 0, :, 0].T, self.horizontal.weight[:, 0, 0, :].T)

    def weight_product(self) -> torch.Tensor:
        a, b, h, v = self.factors()
        return torch.einsum("or,cr,ir,jr->ocij", a, b, h, v)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, keep: float | None = None, rank: int | None = None,
                  n_iter_max: int = 500, init: str = "svd", n_restarts: int = 3,
                  random_state: int = 0) -> CPConv2d:
        """CP-ALS (tensorly, numpy backend, scoped) of ``conv``'s kernel at ``rank`` or at the
        rank a ``keep`` fraction allows; weights are absorbed into the output factor."""
        from ..tensor import cp

        check_plain_conv(conv, "CPConv2d.from_conv")
        out_c, in_c, kh, kw = conv.weight.shape
        if rank is None:
            if keep is None:
                raise ValueError("pass keep (fraction of parameters) or rank")
            rank = cp_rank_for_keep(in_c, out_c, (kh, kw), keep)
        dec = cp(conv.weight.detach().double().cpu().numpy(), int(rank), n_iter_max=n_iter_max,
                 tol=1e-10, init=init, svd="truncated_svd", n_restarts=n_restarts,
                 random_state=random_state)
        a, b, h, v = (torch.as_tensor(f) for f in dec.factors)
        a = a * torch.as_tensor(dec.weights)[None, :]
        # balance the scale of the three input-side factors for fp32 training
        for f in (b, h, v):
            n = f.norm(dim=0).clamp_min(1e-12)
            f /= n
            a = a * n[None, :]
        layer = cls(in_c, out_c, (kh, kw), int(rank), conv.stride, conv.padding, conv.dilation,
                    conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
        layer.set_factors(a, b, h, v)
        if conv.bias is not None:
            with torch.no_grad():
                layer.last.bias.copy_(conv.bias)
        layer.decomposition_error = float(dec.rel_error)
        return layer

    def set_factors(self, a: torch.Tensor, b: torch.Tensor, h: torch.Tensor,
                    v: torch.Tensor) -> None:
        """Load CP factors ``A (out,R), B (in,R), H (k_h,R), V (k_w,R)``."""
        r = self.rank
        dev, dt = self.first.weight.device, self.first.weight.dtype
        with torch.no_grad():
            self.last.weight.copy_(a.reshape(self.out_channels, r, 1, 1).to(dev, dt))
            self.first.weight.copy_(b.T.reshape(r, self.in_channels, 1, 1).to(dev, dt))
            self.vertical.weight.copy_(h.T.reshape(r, 1, -1, 1).to(dev, dt))
            self.horizontal.weight.copy_(v.T.reshape(r, 1, 1, -1).to(dev, dt))

    def to_conv(self) -> nn.Conv2d:
        """Export as one dense ``nn.Conv2d`` (kernel composed in float64)."""
        w = self.first.weight
        dense = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                          self.padding, self.dilation, bias=self.last.bias is not None,
                          device=w.device, dtype=w.dtype)
        with torch.no_grad():
            a, b, h, v = (f.double() for f in self.factors())
            dense.weight.copy_(torch.einsum("or,cr,ir,jr->ocij", a, b, h, v).to(w.dtype))
            if self.last.bias is not None:
                dense.bias.copy_(self.last.bias)
        return dense

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def manifest_entry(self) -> dict:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "rank": self.rank,
                "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "bias": self.last.bias is not None,
                "dtype": dtype_name(self.first.weight.dtype)}

    @classmethod
    def from_manifest_entry(cls, entry: dict) -> CPConv2d:
        return cls(positive_int(entry, "in_channels"), positive_int(entry, "out_channels"),
                   pair_entry(entry, "kernel_size"), positive_int(entry, "rank"),
                   pair_entry(entry, "stride"), pair_entry(entry, "padding", zero=True),
                   pair_entry(entry, "dilation"), bias=bool(entry.get("bias", True)),
                   dtype=parse_dtype(entry.get("dtype", "float32")))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"rank={self.rank}, stride={self.stride}, padding={self.padding}")
