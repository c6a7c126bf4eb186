"""Factorized spectral convolution (TFNO) and multi-grid domain decomposition (MG-TFNO).

An FNO spectral layer (Li et al., "Fourier Neural Operator for Parametric PDEs", ICLR 2021)
multiplies the lowest ``m1 x m2`` Fourier modes of its input by a complex weight
``W[i, o, kx, ky]``. Kossaifi et al., "Multi-Grid Tensorized Fourier Neural Operator for
High-Resolution PDEs" (TMLR 2024) store ``W`` as a Tucker, CP or tensor-train tensor and
contract the input with the factors without rebuilding ``W``; they also split large inputs
into patches, each fed with coarser, wider views of its surroundings as extra channels
(:class:`MultigridPatching2D`).

Modes: ``m1`` rows of the 2-D rFFT (``m1/2`` lowest non-negative and ``m1/2`` negative
frequencies) by the ``m2`` lowest columns. Complex parameters are stored as real tensors with
a trailing dimension 2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

FACTORIZATIONS = ("dense", "tucker", "cp", "tt")

_EQ = {
    "dense": "zixy,ioxy->zoxy",
    "tucker": "zixy,iA,oB,xC,yD,ABCD->zoxy",
    "cp": "zixy,r,ir,or,xr,yr->zoxy",
    "tt": "zixy,iA,AoB,BxC,Cy->zoxy",
}


def _complex_param(*shape: int, std: float, gen: torch.Generator | None = None,
                   dtype: torch.dtype | None = None) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape, 2, generator=gen, dtype=dtype) * std / math.sqrt(2))


def _tucker_ranks(dims: Sequence[int], fraction: float) -> list[int]:
    dense = math.prod(dims)

    def count(rho: float) -> tuple[int, list[int]]:
        r = [max(1, min(d, round(rho * d))) for d in dims]
        return math.prod(r) + sum(d * k for d, k in zip(dims, r, strict=True)), r

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count(mid)[0] <= fraction * dense else (lo, mid)
    return count(lo)[1]


def _tt_ranks(dims: Sequence[int], fraction: float) -> list[int]:
    i, o, x, y = dims
    best = 1
    for r in range(1, max(dims) ** 2 + 1):
        if i * r + r * o * r + r * x * r + r * y > fraction * math.prod(dims):
            break
        best = r
    caps = [min(best, i, o * x * y), min(best, i * o, x * y), min(best, i * o * x, y)]
    return caps


class FactorizedSpectralConv2d(nn.Module):
    """Spectral convolution ``in -> out`` over ``modes = (m1, m2)`` with the weight as
    ``factorization`` in ``('dense', 'tucker', 'cp', 'tt')``.

    ``rank``: a float is the fraction of the dense weight's parameters to use (ranks chosen
    proportionally to the modes: TFNO's convention); otherwise Tucker takes 4 ranks, CP one
    int, TT 3 inner ranks. The input is contracted with the factors directly.

    Not a :class:`~lowrank.nn.StructuredLayer`: its weight lives in Fourier space and acts on
    whatever grid the input has, so no ``nn.Conv2d`` / ``nn.Linear`` of fixed size computes
    the same map; :meth:`dense_weight` is the dense complex weight itself.
    """

    def __init__(self, in_channels: int, out_channels: int, modes: tuple[int, int],
                 factorization: str = "tucker", rank: float | int | Sequence[int] = 0.1,
                 fft_norm: str = "forward", seed: int | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if factorization not in FACTORIZATIONS:
            raise ValueError(f"factorization must be one of {FACTORIZATIONS}, got "
                             f"{factorization!r}")
        m1, m2 = int(modes[0]), int(modes[1])
        if m1 < 2 or m1 % 2 or m2 < 1:
            raise ValueError(f"modes must be (even m1 >= 2, m2 >= 1), got {modes!r}")
        self.in_channels, self.out_channels, self.modes = in_channels, out_channels, (m1, m2)
        self.factorization, self.fft_norm = factorization, fft_norm
        dims = (in_channels, out_channels, m1, m2)
        std = math.sqrt(2.0 / (in_channels + out_channels))
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        kw = {"gen": gen, "dtype": dtype}
        if factorization == "dense":
            self.weight = _complex_param(*dims, std=std, **kw)
            self.ranks: tuple[int, ...] = ()
        elif factorization == "tucker":
            ranks = _tucker_ranks(dims, rank) if isinstance(rank, float) else list(rank)
            if len(ranks) != 4 or any(not 1 <= r <= d for r, d in zip(ranks, dims,
                                                                      strict=True)):
                raise ValueError(f"Tucker ranks must be 4 ints within {dims}, got {rank!r}")
            self.ranks = tuple(int(r) for r in ranks)
            self.core = _complex_param(*self.ranks, std=std, **kw)
            self.factors = nn.ParameterList(
                [_complex_param(d, r, std=1 / math.sqrt(d), **kw) for d, r in zip(
                    dims, self.ranks, strict=True)])
            with torch.no_grad():  # orthonormal-ish factors keep the weight's scale
                for f in self.factors:
                    q = torch.linalg.qr(torch.view_as_complex(f.data.contiguous()))[0]
                    f.copy_(torch.view_as_real(q))
        elif factorization == "cp":
            r = max(1, int(rank * math.prod(dims) / (sum(dims) + 1))) if isinstance(
                rank, float) else int(rank)
            self.ranks = (r,)
            self.weights = _complex_param(r, std=std * math.sqrt(2 / r) * 2, **kw)
            self.factors = nn.ParameterList([_complex_param(d, r, std=1.0, **kw) for d in dims])
        else:
            ranks = _tt_ranks(dims, rank) if isinstance(rank, float) else list(rank)
            if len(ranks) != 3 or min(ranks) < 1:
                raise ValueError(f"TT ranks must be 3 positive ints, got {rank!r}")
            self.ranks = tuple(int(r) for r in ranks)
            ra, rb, rc = self.ranks
            scale = std ** 0.25
            self.cores = nn.ParameterList([
                _complex_param(in_channels, ra, std=scale, **kw),
                _complex_param(ra, out_channels, rb, std=scale / math.sqrt(ra), **kw),
                _complex_param(rb, m1, rc, std=scale / math.sqrt(rb), **kw),
                _complex_param(rc, m2, std=scale / math.sqrt(rc), **kw)])

    def _operands(self) -> list[torch.Tensor]:
        c = torch.view_as_complex
        if self.factorization == "dense":
            return [c(self.weight)]
        if self.factorization == "tucker":
            return [*(c(f) for f in self.factors), c(self.core)]
        if self.factorization == "cp":
            return [c(self.weights), *(c(f) for f in self.factors)]
        return [c(g) for g in self.cores]

    def dense_weight(self) -> torch.Tensor:
        """The dense complex weight ``(in, out, m1, m2)`` the factors represent."""
        ops = self._operands()
        eq = _EQ[self.factorization].replace("zixy,", "").replace("->zoxy", "->ioxy")
        return torch.einsum(eq, *ops) if self.factorization != "dense" else ops[0]

    def _low_modes(self, x_ft: torch.Tensor) -> torch.Tensor:
        m1, m2 = self.modes
        h = m1 // 2
        return torch.cat([x_ft[..., :h, :m2], x_ft[..., -h:, :m2]], dim=-2)

    def forward(self, x: torch.Tensor, reconstructed: bool = False) -> torch.Tensor:
        height, width = x.shape[-2:]
        m1, m2 = self.modes
        if m1 > height or m2 > width // 2 + 1:
            raise ValueError(f"modes {self.modes} exceed the input's {height}x{width} grid")
        x_ft = torch.fft.rfft2(x, norm=self.fft_norm)
        low = self._low_modes(x_ft)
        if reconstructed:
            y = torch.einsum("zixy,ioxy->zoxy", low, self.dense_weight())
        else:
            y = torch.einsum(_EQ[self.factorization], low, *self._operands())
        out = torch.zeros(x.shape[0], self.out_channels, height, width // 2 + 1,
                          dtype=y.dtype, device=x.device)
        h = m1 // 2
        out[..., :h, :m2] = y[..., :h, :]
        out[..., -h:, :m2] = y[..., h:, :]
        return torch.fft.irfft2(out, s=(height, width), norm=self.fft_norm)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, factorization: str,
                   rank: Sequence[int] | int, fft_norm: str = "forward"
                   ) -> FactorizedSpectralConv2d:
        """Factorize a dense complex weight ``(in, out, m1, m2)``: Tucker by HOSVD, TT by
        TT-SVD (complex, exact at full rank); CP is trained from scratch, not converted."""
        i, o, m1, m2 = weight.shape
        w = weight.to(torch.complex128)
        layer = cls(i, o, (m1, m2), factorization, rank, fft_norm,
                    dtype=weight.real.dtype)
        r = torch.view_as_real
        with torch.no_grad():
            if factorization == "dense":
                layer.weight.copy_(r(w).to(layer.weight.dtype))
            elif factorization == "tucker":
                core = w
                for n, rn in enumerate(layer.ranks):
                    unf = w.movedim(n, 0).reshape(w.shape[n], -1)
                    u = torch.linalg.svd(unf, full_matrices=False)[0][:, :rn]
                    layer.factors[n].copy_(r(u).to(layer.factors[n].dtype))
                    core = torch.movedim(torch.tensordot(u.conj().T, core.movedim(n, 0), 1),
                                         0, n)
                layer.core.copy_(r(core).to(layer.core.dtype))
            elif factorization == "tt":
                cores, carry, prev = [], w.reshape(i, -1), 1
                dims = [i, o, m1, m2]
                for k, rk in enumerate(layer.ranks):
                    u, s, vh = torch.linalg.svd(carry.reshape(prev * dims[k], -1),
                                                full_matrices=False)
                    u, s, vh = u[:, :rk], s[:rk], vh[:rk]
                    cores.append(u.reshape(prev, dims[k], rk) if k else u.reshape(dims[k], rk))
                    carry, prev = s[:, None] * vh, rk
                cores.append(carry.reshape(prev, m2))
                for dst, src in zip(layer.cores, cores, strict=True):
                    dst.copy_(r(src).to(dst.dtype))
            else:
                raise ValueError("from_dense supports 'dense', 'tucker' and 'tt'; train a CP "
                                 "spectral weight from scratch")
        return layer

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def dense_parameters(self) -> int:
        return 2 * self.in_channels * self.out_channels * self.modes[0] * self.modes[1]

    def flops(self, height: int, width: int, batch: int = 1, include_fft: bool = True) -> int:
        """Estimated real floating-point operations of one forward pass: the two FFTs
        (``2.5 N log2 N`` per real transform and channel) plus the spectral contraction
        (8 real flops per complex multiply-add) in the order this layer evaluates it."""
        n = height * width
        fft = 2.5 * n * math.log2(max(n, 2)) * (self.in_channels + self.out_channels) * batch
        fft = fft if include_fft else 0.0
        i, o = self.in_channels, self.out_channels
        m1, m2 = self.modes
        f = m1 * m2
        if self.factorization == "dense":
            mac = batch * i * o * f
        elif self.factorization == "tucker":
            a, b, c, d = self.ranks
            mac = batch * f * (i * a + a * b + b * o) + a * b * c * d * m1 + a * b * d * f
        elif self.factorization == "cp":
            r = self.ranks[0]
            mac = batch * f * r * (i + o + 1) + r * f * 2
        else:
            ra, rb, rc = self.ranks
            mac = batch * f * (i * ra + ra * o * rb + o * rb) + f * rb * rc
        return int(fft + 8 * mac)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, modes={self.modes}, "
                f"factorization={self.factorization!r}, ranks={self.ranks}")


class TFNO2d(nn.Module):
    """A small (tensorized) FNO: 1x1 lifting, ``n_layers`` blocks of
    ``gelu(spectral(x) + 1x1(x))``, and a two-layer 1x1 projection."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 32,
                 modes: tuple[int, int] = (16, 16), n_layers: int = 4,
                 factorization: str = "tucker", rank: float | int | Sequence[int] = 0.1,
                 seed: int | None = None) -> None:
        super().__init__()
        self.lift = nn.Conv2d(in_channels, width, 1)
        self.spectral = nn.ModuleList([
            FactorizedSpectralConv2d(width, width, modes, factorization, rank,
                                     seed=None if seed is None else seed + k)
            for k in range(n_layers)])
        self.skips = nn.ModuleList([nn.Conv2d(width, width, 1) for _ in range(n_layers)])
        self.project = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.GELU(),
                                     nn.Conv2d(2 * width, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lift(x)
        for k, (spec, skip) in enumerate(zip(self.spectral, self.skips, strict=True)):
            x = spec(x) + skip(x)
            if k < len(self.spectral) - 1:
                x = nn.functional.gelu(x)
        return self.project(x)


class MultigridPatching2D(nn.Module):
    """MG-TFNO's multi-grid domain decomposition around ``model``.

    The periodic ``H x W`` input is split into ``2^levels`` x ``2^levels`` patches; each patch
    is padded by ``padding_fraction`` of its size with its neighbours and stacked (as extra
    channels) with ``levels`` coarser views: at level ``l`` the ``2^l``-times wider window
    centred on the patch, average-pooled by ``2^l`` to the patch's size. ``model`` maps
    ``C (levels + 1)`` channels to its outputs on each patch; the padded borders are cropped
    and the patches stitched back.
    """

    def __init__(self, model: nn.Module | None, levels: int = 1,
                 padding_fraction: float = 0.0) -> None:
        super().__init__()
        if levels < 0 or not 0 <= padding_fraction < 1:
            raise ValueError(f"need levels >= 0 and 0 <= padding_fraction < 1, got {levels}, "
                             f"{padding_fraction}")
        self.model, self.levels, self.padding_fraction = model, levels, padding_fraction

    def _sizes(self, height: int, width: int) -> tuple[int, int, int, int, int]:
        n = 2 ** self.levels
        if height % n or width % n:
            raise ValueError(f"input {height}x{width} does not split into {n}x{n} patches")
        ph, pw = height // n, width // n
        pad_h, pad_w = round(self.padding_fraction * ph), round(self.padding_fraction * pw)
        return n, ph, pw, pad_h, pad_w

    def patch(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B n^2, C (levels+1), h + 2 pad, w + 2 pad)``."""
        b, c, height, width = x.shape
        n, ph, pw, pad_h, pad_w = self._sizes(height, width)
        dev = x.device
        out = []
        for p in range(n):
            for q in range(n):
                views = []
                for lev in range(self.levels + 1):
                    s = 2 ** lev
                    rows = p * ph + ph // 2 - (ph * s) // 2 - pad_h * s + torch.arange(
                        (ph + 2 * pad_h) * s, device=dev)
                    cols = q * pw + pw // 2 - (pw * s) // 2 - pad_w * s + torch.arange(
                        (pw + 2 * pad_w) * s, device=dev)
                    win = x[:, :, rows % height][:, :, :, cols % width]
                    views.append(nn.functional.avg_pool2d(win, s) if s > 1 else win)
                out.append(torch.cat(views, 1))
        return torch.stack(out, 1).reshape(b * n * n, c * (self.levels + 1), ph + 2 * pad_h,
                                           pw + 2 * pad_w)

    def unpatch(self, y: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Crop the padding of each patch output and stitch ``(B n^2, C', ., .)`` back."""
        n, ph, pw, pad_h, pad_w = self._sizes(height, width)
        y = y[..., pad_h:pad_h + ph, pad_w:pad_w + pw]
        b = y.shape[0] // (n * n)
        y = y.reshape(b, n, n, y.shape[1], ph, pw).permute(0, 3, 1, 4, 2, 5)
        return y.reshape(b, -1, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            raise ValueError("MultigridPatching2D needs a model to run forward")
        return self.unpatch(self.model(self.patch(x)), x.shape[-2], x.shape[-1])
