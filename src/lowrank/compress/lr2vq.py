"""LR^2VQ: vector quantization of weight sub-vectors in a low-rank space ("Learning Low-Rank
Representations for Model Compression", 2022).

Each weight (out x in) is cut into sub-vectors of ``m`` consecutive input weights. A rank-``d``
map (the top ``d`` principal directions of the centred sub-vectors: the training-free start of
the paper's learned map) sends them to ``d`` dimensions, where k-means finds ``k`` centroids
(:mod:`lowrank.linalg.kmeans`: exact 1-D Lloyd for ``d = 1``; k-means++ seeding and Lloyd
iterations otherwise); a sub-vector is rebuilt as ``mean + basis @ centroid``. Storage
(:class:`VQLinear`): the codes bit-packed at ``ceil(log2 k)`` bits each plus ``k d + m d + m``
values. ``d = m`` is plain product quantization with one shared codebook. The paper's
end-to-end fine-tuning of the map and codebook is not part of this training-free method.
Parameters are unchanged (as for RTN); bytes shrink.

**Activation-aware** (default when calibration statistics are given): k-means weights the
squared error of input channel ``j`` by ``G_jj`` (G: the layer's input Gram), so its objective
is the output error ``||(W - W')X||_F^2`` with the Gram's off-diagonal part dropped, and the
stored format does not change. (Full whitening would mix input channels and need an
``in x in`` map per layer; quantizing ``W diag(sqrt(G_jj))`` instead, and dividing after,
spreads the values of the loud channels into heavy tails that a shared codebook serves badly:
it measured worse on MiniLM.)

**Rate.** With a byte budget the rate is chosen per matrix: ``bytes_fraction`` of the layer's
dense bytes (weight and bias; the bias stays as is), i.e. ``bytes_fraction * (out * in + bias)
- bias`` values at the layer's dtype for the codes, codebook and map: exactly what a uniform
SVD-LLM factorization at ``keep = bytes_fraction`` stores for that matrix (the rule CoSpaDi
uses); ``bits`` gives the budget in bits per weight instead. Parameters are unchanged, so the
method has no ``keep``. For every sub-vector size ``m`` (1, 2, 4, 8, ... up to ``max_subvector``,
dividing ``in``) and clustering dimension ``d <= m``, the largest ``k`` whose storage fits is
found, and the ``(m, d, k)`` of smallest predicted error is used (the PCA-residual plus
Zador-distortion model of :mod:`lowrank.compress.lr2vq_rate`). A matrix cannot always fill its
own share: once ``k = 2^b`` the next centroid costs one more bit per code. The bytes left unused
then go, greedily, to the matrices where they remove the most predicted squared error per
byte (none above its dense size). The total never exceeds the summed budget and, with a few
dozen matrices, lands within 2% of it (the tests check this against SVD-LLM's bytes at keep
0.8 / 0.6 / 0.4); it stays lower when the remaining slack buys no matrix a step, e.g. every
codebook at its cap (``max_codebook`` for ``d >= 2``, the distinct values for ``d = 1``).
Without ``bytes_fraction``/``bits`` the rate is fixed by ``codebook``/``subvector`` (256 and 4:
2 bits per weight for the codes) and ``d`` is chosen by the same error model unless given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..alloc.budget import Move, greedy_choice
from ..errors import ConfigError, DataError
from ..linalg.kmeans import kmeans, kmeans_1d, weighted_lowrank_kmeans
from ..nn.vq_linear import VQLinear
from ..surgery import replace_module
from ..utils.checks import check_int
from ..utils.progress import progress
from .base import (
    METHODS,
    Calibration,
    CompressionConfig,
    MethodOutcome,
    output_error,
)
from .lr2vq_rate import Rate, choose_rate, fixed_rate
from .result import ModuleReport


def channel_importance(gram: torch.Tensor) -> torch.Tensor:
    """``G_jj / mean(G_jj)`` (floored at 1e-6: inputs that never fire), the weight of input
    channel ``j``'s squared error in the output error with the Gram's off-diagonal dropped."""
    diag = gram.diagonal().to(torch.float64).clamp_min(0)
    mean = float(diag.mean())
    if mean <= 0:
        return torch.ones_like(diag)
    return (diag / mean).clamp_min(1e-6)


def vq_fit(weight: torch.Tensor, codebook: int, subvector: int, dim: int, iters: int = 20,
           seed: int = 0, importance: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes, centroids, basis, mean)`` of LR^2VQ for ``weight`` (out x in).

    ``importance`` (in): weights of each input channel's squared error (activation-aware
    k-means, :func:`channel_importance`); None: plain squared error. The codebook may come
    out smaller than ``codebook`` for scalar (``m = d = 1``) codes when the weight has fewer
    distinct values."""
    out_f, in_f = weight.shape
    if in_f % subvector:
        raise ConfigError(f"in_features={in_f} is not a multiple of subvector={subvector}")
    check_int("dim", dim, 1, subvector)
    vecs = weight.reshape(-1, subvector).to(torch.float64)
    mean = vecs.mean(0)
    centred = vecs - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred)
    basis = vectors.flip(1)[:, :dim]  # (m, d): top principal directions, orthonormal
    z = centred @ basis
    k = min(codebook, vecs.shape[0])
    if importance is None:
        cent, labels = kmeans(z, k, iters=iters, seed=seed)
        return labels, cent, basis, mean
    if importance.shape != (in_f,):
        raise DataError(f"importance must have in_features={in_f} entries, got "
                        f"{tuple(importance.shape)}")
    w = importance.to(vecs).reshape(1, -1, subvector).expand(out_f, -1, -1)
    w = w.reshape(-1, subvector)
    if subvector == 1:  # scalar codes: the weighted 1-D Lloyd is exact and fast
        cent, labels = kmeans_1d(z[:, 0], k, iters, w[:, 0])
    else:
        cent, labels = weighted_lowrank_kmeans(vecs, w, mean, basis, k, iters, seed)
    return labels, cent, basis, mean


@dataclass
class MatrixState:
    """One targeted matrix between the rate pass and the k-means pass of :class:`LR2VQ`."""

    name: str
    layer: nn.Linear
    weight: torch.Tensor  # float64 copy (out x in)
    gram: torch.Tensor | None  # the input Gram (float64), None without calibration
    importance: torch.Tensor | None  # per input channel, None when not activation-aware
    geometry: torch.Tensor  # the weight in the geometry of the error
    has_bias: bool
    value_bytes: int  # bytes per stored value (the layer's dtype)
    budget: float | None  # bytes for the weight (bias excluded); None at a fixed rate
    rate: Rate | None = None
    spectra: dict[int, torch.Tensor] = field(default_factory=dict)  # per sub-vector size


@METHODS.register
@dataclass
class LR2VQ(CompressionConfig):
    """Low-rank sub-vector projection + k-means vector quantization (see module docstring)."""

    method: ClassVar[str] = "lr2vq"
    version: ClassVar[int] = 2  # 2: the byte budget is 'bytes_fraction' (was 'keep')

    bytes_fraction: float | None = field(default=None, metadata={
        "help": "byte budget: fraction of each layer's dense bytes (weight and bias) that "
                "remain, the bytes uniform SVD-LLM stores at keep=bytes_fraction; m, d, k are "
                "chosen per matrix"})
    bits: float | None = field(default=None, metadata={
        "help": "byte budget in bits per weight (codes + codebook + map), instead of "
                "bytes_fraction"})
    codebook: int | None = field(default=None, metadata={
        "help": "centroids k per matrix (codes of ceil(log2 k) bits); default 256 at a fixed "
                "rate; with a byte budget an upper bound"})
    subvector: int | None = field(default=None, metadata={
        "help": "sub-vector length m (consecutive input weights, must divide in_features); "
                "default 4 at a fixed rate, chosen per matrix with a byte budget"})
    dim: int | None = field(default=None, metadata={
        "help": "clustering dimension d (1 <= d <= m); default: the d of smallest predicted "
                "error"})
    max_subvector: int = field(default=8, metadata={
        "help": "largest m tried with a byte budget (powers of two up to it)"})
    max_codebook: int = field(default=65536, metadata={
        "help": "largest k of vector (d >= 2) codebooks tried with a byte budget; scalar (d = 1) "
                "codebooks use exact 1-D k-means and may grow to the number of sub-vectors"})
    iters: int = field(default=20, metadata={"help": "Lloyd iterations of k-means"})
    activation_aware: bool = field(default=True, metadata={
        "help": "with calibration statistics, weight each input channel's squared error by "
                "G_jj in k-means (the output error with the Gram's off-diagonal dropped)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value in (("codebook", self.codebook), ("subvector", self.subvector),
                            ("dim", self.dim)):
            if value is not None:
                check_int(name, value, 1)
        check_int("max_subvector", self.max_subvector, 1)
        check_int("max_codebook", self.max_codebook, 2)
        check_int("iters", self.iters, 0)
        largest = self.subvector or (self.max_subvector if self.budgeted else 4)
        if self.dim is not None and self.dim > largest:
            raise ConfigError(f"dim must be an int in [1, subvector={largest}], got "
                              f"{self.dim}")
        if self.bytes_fraction is not None and self.bits is not None:
            raise ConfigError(f"give bytes_fraction or bits, not both (got bytes_fraction="
                              f"{self.bytes_fraction}, bits={self.bits})")
        if self.bytes_fraction is not None:
            if isinstance(self.bytes_fraction, bool) or not isinstance(
                    self.bytes_fraction, (int, float)) or not 0 < float(self.bytes_fraction) <= 1:
                raise ConfigError(f"bytes_fraction must be a number in (0, 1] or None, got "
                                  f"{self.bytes_fraction!r}")
            self.bytes_fraction = float(self.bytes_fraction)
        if self.bits is not None:
            if isinstance(self.bits, bool) or not isinstance(self.bits, (int, float)) \
                    or not self.bits > 0:
                raise ConfigError(f"bits (per weight) must be a number > 0 or None, got "
                                  f"{self.bits!r}")
            self.bits = float(self.bits)
        if not isinstance(self.activation_aware, bool):
            raise ConfigError(f"activation_aware must be a bool, got {self.activation_aware!r}")

    @classmethod
    def upgrade(cls, fields: dict[str, Any], version: int) -> dict[str, Any]:
        fields = dict(fields)
        if "keep" in fields:  # version 1: keep meant this byte budget
            fields["bytes_fraction"] = fields.pop("keep")
        return fields

    @property
    def budgeted(self) -> bool:
        return self.bytes_fraction is not None or self.bits is not None

    def budget_bytes(self, out_f: int, in_f: int, bias: bool, value_bytes: int) -> float:
        """The byte budget of one matrix's weight (bias excluded, it stays as is)."""
        if self.bits is not None:
            return self.bits * out_f * in_f / 8
        extra = out_f if bias else 0
        return (self.bytes_fraction * (out_f * in_f + extra) - extra) * value_bytes

    def rate_for(self, weight: torch.Tensor, bias: bool, value_bytes: int,
                 budget: float | None = None, spectra: dict[int, torch.Tensor] | None = None
                 ) -> Rate | None:
        """The configuration of one matrix (``weight`` in the geometry of the error: its
        columns times ``sqrt`` of their importance when activation-aware), within ``budget``
        bytes (default: :meth:`budget_bytes`) when budgeted."""
        out_f, in_f = weight.shape
        if not self.budgeted:
            return fixed_rate(weight, self.subvector or 4, self.codebook or 256, self.dim,
                              value_bytes)
        if self.subvector is not None:
            subvectors = [self.subvector]
        else:
            subvectors = [2 ** i for i in range(int(math.log2(self.max_subvector)) + 1)]
        if budget is None:
            budget = self.budget_bytes(out_f, in_f, bias, value_bytes)
        return choose_rate(weight, budget, value_bytes, subvectors=subvectors,
                           dims=None if self.dim is None else [self.dim],
                           max_codebook=self.max_codebook, codebook_cap=self.codebook,
                           spectra=spectra)

    def spread_slack(self, items: list[MatrixState]) -> float:
        """Give the bytes that the per-matrix choices leave unused to the matrices where
        they buy the most: a matrix whose codebook is full for its code width (``k = 2^b``)
        needs one more bit per code to grow, more than its own slack. Greedy on the
        predicted squared error (relative, times the matrix size) removed per byte, no matrix
        above its dense size (:func:`~lowrank.alloc.budget.greedy_choice`); returns the slack
        left. Each item's ``rate`` is updated in place."""
        live = [it for it in items if it.rate is not None]

        def grow(i: int, old: Rate, slack: float) -> list[Move]:
            """Matrix ``i``'s best rate within its bytes plus the slack, if it is better."""
            if slack <= 0:
                return []
            it = live[i]
            dense = it.geometry.numel() * it.value_bytes  # never above the dense size
            new = self.rate_for(it.geometry, it.has_bias, it.value_bytes,
                                budget=min(old.bytes + slack, dense), spectra=it.spectra)
            if new is None or new.bytes <= old.bytes or not new.better_than(old):
                return []
            gain = (old.predicted_rel_error ** 2 - new.predicted_rel_error ** 2) \
                * it.geometry.numel() / (new.bytes - old.bytes)
            return [(new, new.bytes - old.bytes, gain)] if gain > 0 else []

        rates = [it.rate for it in live]
        slack = greedy_choice(rates, sum(it.budget - it.rate.bytes for it in live), grow)
        for it, rate in zip(live, rates, strict=True):
            it.rate = rate
        return slack

    def apply(self, model: nn.Module, modules: dict[str, nn.Module],
              calib: Calibration) -> MethodOutcome:
        stats = calib.stats
        items = []
        for name, lin in modules.items():  # pass 1: the rate of every matrix
            weight = lin.weight.detach().to(torch.float64)
            out_f, in_f = weight.shape
            gram = None
            if stats is not None and name in stats.module_site:
                gram = stats.site(name).gram.to(torch.float64)
            importance = channel_importance(gram).to(weight.device) \
                if self.activation_aware and gram is not None else None
            has_bias, value_bytes = lin.bias is not None, lin.weight.element_size()
            it = MatrixState(
                name=name, layer=lin, weight=weight, gram=gram, importance=importance,
                geometry=weight if importance is None else weight * importance.sqrt(),
                has_bias=has_bias, value_bytes=value_bytes,
                budget=self.budget_bytes(out_f, in_f, has_bias, value_bytes)
                if self.budgeted else None)
            it.rate = self.rate_for(it.geometry, it.has_bias, it.value_bytes,
                                    spectra=it.spectra)
            items.append(it)
        slack = self.spread_slack(items) if self.budgeted else None

        reports = []
        bytes_before = bytes_after = 0
        target_total = 0.0
        for it in progress(items, "lr2vq", quiet=True):  # pass 2: k-means
            name, lin, weight, rate = it.name, it.layer, it.weight, it.rate
            out_f, in_f = weight.shape
            vbytes = it.value_bytes
            params = out_f * in_f + (out_f if it.has_bias else 0)
            b_before = sum(p.numel() * p.element_size() for p in lin.parameters())
            notes: dict = {"bytes_before": b_before,
                           "activation_aware": it.importance is not None}
            if it.budget is not None:
                notes["target_bytes"] = it.budget + (out_f * vbytes if it.has_bias else 0)
                target_total += notes["target_bytes"]
            if rate is None:
                approx = weight
                notes["left_dense"] = ("in_features not a multiple of subvector"
                                       if not self.budgeted else "no codebook fits the budget")
                notes.update(bytes_after=b_before, bits_per_weight=8.0 * vbytes)
            else:
                codes, cent, basis, mean = vq_fit(weight, rate.codebook, rate.subvector,
                                                  rate.dim, self.iters, self.seed,
                                                  it.importance)
                dt, dev = lin.weight.dtype, lin.weight.device
                new = VQLinear.from_parts(codes, cent.to(dt), basis.to(dt), mean.to(dt), out_f,
                                          in_f, None if lin.bias is None else lin.bias.detach())
                new = new.to(dev)
                approx = new.dense_weight().detach().to(torch.float64)
                notes.update(codebook=new.codebook, subvector=rate.subvector, dim=rate.dim,
                             code_bits=new.code_bits(),
                             bits_per_weight=new.bits_per_weight(8 * vbytes),
                             bytes_after=new.num_bytes(),
                             predicted_rel_error=rate.predicted_rel_error)
                replace_module(model, name, new)
            bytes_before += b_before
            bytes_after += notes["bytes_after"]
            out_err = None if it.gram is None else output_error(weight, approx, it.gram)
            w_err = float((weight - approx).norm() / weight.norm().clamp_min(1e-300))
            reports.append(ModuleReport(
                name=name, out_features=out_f, in_features=in_f, rank=None,
                params_before=params, params_after=params, rel_output_error=out_err,
                rel_weight_error=w_err, energy_kept=max(0.0, 1.0 - w_err ** 2), notes=notes))
        total = sum(r.params_before for r in reports)
        allocation = {"bytes_fraction": self.bytes_fraction, "bits": self.bits,
                      "bytes_before": bytes_before,
                      "bytes_after": bytes_after,
                      "rates": {r.name: [r.notes.get("subvector"), r.notes.get("dim"),
                                         r.notes.get("codebook")] for r in reports}}
        if self.budgeted:
            allocation.update(target_bytes=target_total, unused_bytes=slack)
        return MethodOutcome(reports, allocation, None, total, total)
