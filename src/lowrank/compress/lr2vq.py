"""LR^2VQ: vector quantization of weight sub-vectors in a low-rank space ("Learning Low-Rank
Representations for Model Compression", 2022).

Each weight (out x in) is cut into sub-vectors of ``m`` consecutive input weights. A rank-``d``
map (here the top ``d`` principal directions of the centred sub-vectors, the training-free
start of the paper's learned map) sends them to ``d`` dimensions, where k-means (k-means++
seeding, Lloyd iterations) finds ``k`` centroids; a sub-vector is rebuilt as
``mean + basis @ centroid``. ``m`` sets the rate (``ceil(log2 k) / m`` bits per weight for the
codes, plus ``k d + m d + m`` values per matrix), ``d`` trades low-rank error against
clustering error; with ``d = m`` it is plain product quantization with one shared codebook.
The paper's end-to-end fine-tuning of the map and codebook is not part of this
training-free method. Parameters are unchanged (as for RTN); bytes shrink.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..calib.stats import CalibrationStats
from ..errors import ConfigError
from ..nn.vq_linear import VQLinear
from ..registry import register_method
from .base import CompressionConfig, MethodOutcome, output_error, replace_module
from .result import ModuleReport


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return ((x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)).clamp_min(0)


def _nearest(x: torch.Tensor, c: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor,
                                                                           torch.Tensor]:
    idx, dist = [], []
    for i in range(0, x.shape[0], chunk):
        d = _sq_dist(x[i:i + chunk], c)
        v, j = d.min(1)
        idx.append(j)
        dist.append(v)
    return torch.cat(idx), torch.cat(dist)


def kmeans(points: torch.Tensor, k: int, iters: int = 20, seed: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means++ seeding and Lloyd iterations; returns ``(centroids (k x d), labels (N))``.

    With ``k`` equal to the number of distinct points every point is its own centroid.
    """
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (number of points), got {k}")
    gen = torch.Generator().manual_seed(seed)
    x = points
    first = int(torch.randint(n, (1,), generator=gen))
    chosen = [first]
    best = _sq_dist(x, x[first:first + 1]).squeeze(1)
    # k-means++ in batches of candidates: sample proportional to the squared distance
    while len(chosen) < k:
        total = float(best.sum())
        if total <= 0:  # every point already coincides with a centroid: take unused ones
            unused = torch.ones(n, dtype=torch.bool)
            unused[chosen] = False
            chosen += unused.nonzero().squeeze(1)[:k - len(chosen)].tolist()
            break
        step = min(k - len(chosen), max(1, len(chosen)))
        picks = torch.multinomial(best.cpu().double(), step, replacement=False,
                                  generator=gen).tolist()
        picks = [p for p in picks if float(best[p]) > 0]
        chosen += picks
        for i in range(0, len(picks), 512):
            new = x[picks[i:i + 512]]
            best = torch.minimum(best, _nearest(x, new)[1])
    cent = x[chosen[:k]].clone()
    labels, _ = _nearest(x, cent)
    for _ in range(iters):
        sums = torch.zeros_like(cent).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        moved = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], cent)
        new_labels, _ = _nearest(x, moved)
        cent = moved
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return cent, labels


def vq_fit(weight: torch.Tensor, codebook: int, subvector: int, dim: int, iters: int = 20,
           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes, centroids, basis, mean)`` of LR^2VQ for ``weight`` (out x in)."""
    out_f, in_f = weight.shape
    if in_f % subvector:
        raise ValueError(f"in_features={in_f} is not a multiple of subvector={subvector}")
    vecs = weight.reshape(-1, subvector).to(torch.float64)
    mean = vecs.mean(0)
    centred = vecs - mean
    _, _, vt = torch.linalg.svd(centred, full_matrices=False)
    basis = vt[:dim].T  # (m, d), orthonormal columns
    z = centred @ basis
    k = min(codebook, vecs.shape[0])
    cent, labels = kmeans(z, k, iters=iters, seed=seed)
    return labels, cent, basis, mean


@register_method
@dataclass
class LR2VQ(CompressionConfig):
    """Low-rank sub-vector projection + k-means vector quantization (see module docstring)."""

    method: ClassVar[str] = "lr2vq"

    codebook: int = field(default=256, metadata={
        "help": "centroids k per matrix (codes of ceil(log2 k) bits); with keep set, an upper "
                "bound"})
    subvector: int = field(default=4, metadata={
        "help": "sub-vector length m (consecutive input weights); must divide in_features"})
    dim: int | None = field(default=None, metadata={
        "help": "clustering dimension d (1 <= d <= m); default m // 2 (at least 1)"})
    iters: int = field(default=20, metadata={"help": "Lloyd iterations of k-means"})
    keep: float | None = field(default=None, metadata={
        "help": "optional byte budget: fraction of the dense storage (codes at ceil(log2 k) "
                "bits); the largest power-of-two codebook <= codebook that fits is used"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("codebook", "subvector", "iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (
                    0 if name == "iters" else 1):
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.dim is None:
            self.dim = max(1, self.subvector // 2)
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) \
                or not 1 <= self.dim <= self.subvector:
            raise ConfigError(f"dim must be an int in [1, subvector={self.subvector}], "
                              f"got {self.dim!r}")
        if self.keep is not None:
            if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)) \
                    or not 0 < float(self.keep) <= 1:
                raise ConfigError(f"keep must be a number in (0, 1] or None, got {self.keep!r}")
            self.keep = float(self.keep)

    def codebook_for(self, out_f: int, in_f: int, value_bits: int) -> int | None:
        """The codebook size to use for one matrix (None: nothing fits the byte budget)."""
        n = out_f * in_f // self.subvector
        k = min(self.codebook, n)
        if self.keep is None:
            return k
        budget = self.keep * value_bits * out_f * in_f
        k = 2 ** int(math.floor(math.log2(k)))
        while k >= 1:
            bits = n * max(1, math.ceil(math.log2(k))) + value_bits * (
                k * self.dim + self.subvector * self.dim + self.subvector)
            if bits <= budget:
                return k
            k //= 2
        return None

    def apply(self, model: nn.Module, modules: dict[str, nn.Module],
              stats: CalibrationStats | None) -> MethodOutcome:
        reports = []
        bytes_before = bytes_after = 0
        for name, lin in modules.items():
            weight = lin.weight.detach().to(torch.float64)
            out_f, in_f = weight.shape
            vb = torch.finfo(lin.weight.dtype).bits
            params = out_f * in_f + (0 if lin.bias is None else out_f)
            b_before = sum(p.numel() * p.element_size() for p in lin.parameters())
            k = self.codebook_for(out_f, in_f, vb) if in_f % self.subvector == 0 else None
            notes: dict = {"bytes_before": b_before}
            if k is None:
                approx = weight
                notes["left_dense"] = ("in_features not a multiple of subvector"
                                       if in_f % self.subvector else "no codebook fits keep")
                notes.update(bytes_after=b_before, bits_per_weight=float(vb))
            else:
                codes, cent, basis, mean = vq_fit(weight, k, self.subvector, self.dim,
                                                  self.iters, self.seed)
                dt, dev = lin.weight.dtype, lin.weight.device
                new = VQLinear.from_parts(codes, cent.to(dt), basis.to(dt), mean.to(dt), out_f,
                                          in_f, None if lin.bias is None else lin.bias.detach())
                new = new.to(dev)
                approx = new.dense_weight().detach().to(torch.float64)
                notes.update(codebook=k, subvector=self.subvector, dim=self.dim,
                             bits_per_weight=new.bits_per_weight(vb),
                             bytes_after=new.num_bytes())
                replace_module(model, name, new)
            bytes_before += b_before
            bytes_after += notes["bytes_after"]
            out_err = None
            if stats is not None and name in stats.module_site:
                out_err = output_error(weight, approx, stats.site(name).gram.to(weight.device))
            w_err = float((weight - approx).norm() / weight.norm().clamp_min(1e-300))
            reports.append(ModuleReport(
                name=name, out_features=out_f, in_features=in_f, rank=None,
                params_before=params, params_after=params, rel_output_error=out_err,
                rel_weight_error=w_err, energy_kept=max(0.0, 1.0 - w_err ** 2), notes=notes))
        total = sum(r.params_before for r in reports)
        allocation = {"codebook": self.codebook, "subvector": self.subvector, "dim": self.dim,
                      "bytes_before": bytes_before, "bytes_after": bytes_after}
        return MethodOutcome(reports, allocation, self.keep, total, total)
