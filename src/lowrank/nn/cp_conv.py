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

from .kinds import register_module_kind
from .manifest import BIAS, DTYPE, pair, positive
from .protocol import StructuredConv2d
from .tucker_conv import _pair, check_plain_conv


def cp_rank_for_keep(in_channels: int, out_channels: int, kernel: tuple[int, int],
                     keep: float) -> int:
    """Largest ``R`` with ``R (in + out + k_h + k_w) <= keep * in * out * k_h * k_w``."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep!r}")
    dense = in_channels * out_channels * kernel[0] * kernel[1]
    return max(1, int(keep * dense / (in_channels + out_channels + kernel[0] + kernel[1])))


@register_module_kind
class CPConv2d(StructuredConv2d):
    """Conv2d ``in -> out`` of CP rank ``rank``; trainable from scratch or from
    :meth:`from_conv`."""

    manifest_fields = (positive("in_channels"), positive("out_channels"), pair("kernel_size"),
                       positive("rank"), pair("stride"), pair("padding", zero=True),
                       pair("dilation"), BIAS, DTYPE)

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

    def dense_weight(self) -> torch.Tensor:
        """The represented dense kernel ``(out, in, k_h, k_w)``."""
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

    @property
    def bias(self) -> torch.Tensor | None:
        return self.last.bias

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"rank={self.rank}, stride={self.stride}, padding={self.padding}")
