"""AFM: Atomic Feature Mimicking, output-feature PCA with the bias correction (Yu et al.,
"Unified Low-rank Compression Framework for Click-through Rate Prediction", KDD 2024 ADS;
spec §11).

**Linear layers.** With the output mean ``mu = E[y]`` and covariance
``Sigma_y = E[y y^T] - mu mu^T`` of ``y = W x + b`` on calibration tokens (both follow from the
input Gram, input sum and token count: ``linalg/output_pca.py``), keep the top-k eigenvectors
``U_k`` of ``Sigma_y`` and replace the layer by

    y ~ U_k U_k^T (W x + b) + (I - U_k U_k^T) mu,

i.e. a :class:`~lowrank.nn.LowRankLinear` with ``B = U_k``, ``A = U_k^T W`` and bias
``U_k U_k^T b + (I - U_k U_k^T) mu = b + (I - U_k U_k^T) W xbar``. The error is
``(I - U_k U_k^T)(y - mu)``: its squared norm summed over tokens is the sum of the dropped
eigenvalues, so the relative error on centred outputs is ``sqrt(sum_{i>k} l_i / sum_i l_i)``,
never more than LoRD's uncentred projection at the same rank. A layer without a bias gains one
(``out`` parameters), which the budget counts.

**Embedding table** (``embeddings=True``). The rows ``e_v`` of ``model.get_input_embeddings()``
(V x d) are looked up with the token frequencies ``p_v`` of the calibration text; the table
becomes ``E' = (E - 1 mu^T) U_k`` (V x k) followed by a linear with weight ``U_k`` and bias
``mu`` (:class:`~lowrank.nn.FactorizedEmbedding`), where ``mu`` and ``U_k`` are the weighted
mean and top-k principal directions of the rows under ``w_v = (1 - f) p_v + f / V``. The floor
``f`` (``embedding_floor``) mixes in the uniform distribution over the vocabulary: a token the
calibration text never contains still has weight ``f / V``, so the basis also spans the
directions in which rare tokens differ from the mean instead of only those of the frequent
ones (``f = 1``: plain PCA of the table; ``f = 0``: calibration frequencies only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..alloc.budget import BudgetItem
from ..calib.stats import CalibrationStats
from ..errors import ConfigError, DataError
from ..linalg.output_pca import output_covariance, output_pca, weighted_row_moments
from ..nn import FactorizedEmbedding
from ..nn.accounting import linear_params
from ..registry import get_allocator, register_method
from .base import MethodOutcome, replace_module
from .factorize import FactorizationConfig, factorize
from .lord import OutputPCADecomposition, site_stats
from .result import ModuleReport


@dataclass
class AFMDecomposition(OutputPCADecomposition):
    """Centred output PCA of one linear; :meth:`bias` is the mean-corrected bias at rank k."""

    input_mean: torch.Tensor | None = None  # xbar (in,), float64

    def bias(self, rank: int, bias: torch.Tensor | None) -> torch.Tensor:
        """``b + (I - U_k U_k^T) W xbar`` (= ``U_k U_k^T b + (I - U_k U_k^T) mu``), float64."""
        Wm = self.weight @ self.input_mean
        U = self.basis(rank)
        shift = Wm - U @ (U.T @ Wm)
        return shift if bias is None else bias.to(shift.device, torch.float64) + shift


@dataclass
class AffineBudgetItem(BudgetItem):
    """A matrix whose factorized form always stores a bias (``bias=True``), while the dense
    original has one only when ``dense_bias``: bias-less linears under AFM, embedding tables
    (whose factorized form stores the mean)."""

    dense_bias: bool = True

    @property
    def max_rank(self) -> int:
        m, n = self.out_features, self.in_features
        extra = 0 if self.dense_bias else m
        return max(0, min(min(m, n), (m * n - extra - 1) // (m + n)))

    def cost(self, rank: int | None) -> int:
        if rank is None:
            return linear_params(self.out_features, self.in_features, None, self.dense_bias)
        return linear_params(self.out_features, self.in_features, rank, True)


@dataclass
class EmbeddingPCA:
    """Weighted centred PCA of an embedding table's rows (V x d), float64."""

    table: torch.Tensor  # E (V, d)
    weights: torch.Tensor  # w (V,), sums to 1
    mean: torch.Tensor  # mu (d,)
    eigenvalues: torch.Tensor  # (d,) descending, of the weighted covariance
    eigenvectors: torch.Tensor  # (d, d)
    scale: float  # calibration tokens: spectrum in the units of the linears' (summed) spectra

    @classmethod
    def fit(cls, table: torch.Tensor, weights: torch.Tensor, scale: float) -> EmbeddingPCA:
        mean, cov = weighted_row_moments(table, weights)
        pca = output_pca(cov)
        w = weights.to(torch.float64)
        return cls(table.to(torch.float64), w / w.sum(), mean, pca.eigenvalues,
                   pca.eigenvectors, scale)

    @property
    def spectrum(self) -> torch.Tensor:
        return (self.eigenvalues * self.scale).sqrt()

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(E', U_k, mu)`` with ``E' = (E - 1 mu^T) U_k``."""
        U = self.eigenvectors[:, :rank]
        return (self.table - self.mean) @ U, U.clone(), self.mean.clone()


@register_method
@dataclass
class AFM(FactorizationConfig):
    """Centred output PCA with the bias correction (AFM), optionally on the embedding table.

    Budget: ``keep`` is the fraction of the targeted parameters that remain. With
    ``embeddings=True`` the input-embedding table is targeted as well and its ``V x d``
    parameters count in the targeted total. ``embedding_keep=None`` puts the table in the same
    allocation as the linears (one budget, ``keep`` of linears + table, spent by ``alloc``:
    with ``uniform`` the table keeps about the same fraction of its break-even rank as every
    linear); a number compresses the table to that fraction of its own parameters (the largest
    rank that fits) while the linears keep ``keep`` of theirs, and the reported target is the
    parameter-weighted mix of the two (``keep=1`` with ``embedding_keep=0.5`` compresses the
    table alone). A factorized table stores ``k (V + d) + d`` parameters.
    """

    method: ClassVar[str] = "afm"
    needs: ClassVar[frozenset[str]] = frozenset({"gram"})

    embeddings: bool = field(default=False, metadata={
        "help": "also compress the input-embedding table (model.get_input_embeddings()) by the "
                "token-frequency-weighted PCA of its rows; its parameters join the budget"})
    embedding_keep: float | None = field(default=None, metadata={
        "help": "fraction of the embedding table's parameters kept; default: the table shares "
                "one allocation with the linears under keep"})
    embedding_floor: float = field(default=0.1, metadata={
        "help": "weight of the uniform distribution over the vocabulary mixed into the "
                "calibration token frequencies (0: frequencies only, 1: plain PCA of the "
                "table), so unseen tokens still shape the basis"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.embeddings, bool):
            raise ConfigError(f"embeddings must be true or false, got {self.embeddings!r}")
        if self.embedding_keep is not None:
            if isinstance(self.embedding_keep, bool) or not isinstance(
                    self.embedding_keep, (int, float)) or not 0 < self.embedding_keep <= 1:
                raise ConfigError(f"embedding_keep must be a number in (0, 1] (fraction of the "
                                  f"table's parameters kept) or None, got "
                                  f"{self.embedding_keep!r}")
            self.embedding_keep = float(self.embedding_keep)
        if isinstance(self.embedding_floor, bool) or not isinstance(
                self.embedding_floor, (int, float)) or not 0 <= self.embedding_floor <= 1:
            raise ConfigError(f"embedding_floor must be in [0, 1], got "
                              f"{self.embedding_floor!r}")
        self.embedding_floor = float(self.embedding_floor)

    def decompose(self, weight: torch.Tensor, name: str,
                  stats: CalibrationStats | None) -> AFMDecomposition:
        site = site_stats(stats, name, self.method)
        mean = site.mean  # raises DataError for statistics without the input sum
        W = weight.to(torch.float64)
        cov = output_covariance(W, site.gram, site.sum, site.tokens) * site.tokens
        return AFMDecomposition(W, output_pca(cov), input_mean=mean.to(W.device, torch.float64))

    def budget_item(self, name: str, module: nn.Linear, spectrum: torch.Tensor) -> BudgetItem:
        return AffineBudgetItem(name, module.out_features, module.in_features, True, spectrum,
                                dense_bias=module.bias is not None)

    def apply(self, model: nn.Module, modules: dict[str, nn.Module],
              stats: CalibrationStats | None) -> MethodOutcome:
        if not self.embeddings:
            return factorize(self, model, modules, stats)
        name, embedding = input_embedding(model)
        pca, counts = self._embedding_pca(embedding, stats)
        item = AffineBudgetItem(name, embedding.embedding_dim, embedding.num_embeddings, True,
                                pca.spectrum, dense_bias=False)
        if getattr(get_allocator(self.alloc), "needs_weight_spectrum", False):
            item.weight_spectrum = torch.linalg.svdvals(pca.table)  # data-free allocators
        if self.embedding_keep is None:
            outcome = factorize(self, model, modules, stats, extra_items=[item])
            rank = outcome.allocation["ranks"][name]
        else:
            outcome = factorize(self, model, modules, stats)
            rank = rank_for_keep(item, self.embedding_keep, self.rank_align)
            linears_before = outcome.params_before
            outcome.params_before += item.dense_cost()
            outcome.params_after += item.cost(rank)
            outcome.keep_target = (self.keep * linears_before
                                   + self.embedding_keep * item.dense_cost()
                                   ) / outcome.params_before
        report = self._replace_embedding(model, name, embedding, pca, counts, rank, item)
        outcome.reports.insert(0, report)
        outcome.allocation["embedding"] = {
            "name": name, "rank": rank, "keep_target": self.embedding_keep,
            "params_before": report.params_before, "params_after": report.params_after}
        return outcome

    def _embedding_pca(self, embedding: nn.Embedding, stats: CalibrationStats | None
                       ) -> tuple[EmbeddingPCA, torch.Tensor]:
        V = embedding.num_embeddings
        counts = None if stats is None else stats.token_counts
        if counts is None:
            raise DataError("AFM with embeddings=True needs the calibration token counts "
                            "(CalibrationStats.token_counts): recollect the statistics with "
                            "this version of lowrank")
        counts = counts.to(embedding.weight.device, torch.float64)
        if counts.numel() > V and bool(counts[V:].any()):
            raise DataError(f"calibration token ids reach {int(counts.nonzero().max())}, "
                            f"beyond the embedding table's {V} rows: statistics from "
                            "another tokenizer?")
        counts = torch.nn.functional.pad(counts[:V], (0, max(0, V - counts.numel())))
        total = float(counts.sum())
        if total <= 0:
            raise DataError("no calibration tokens were counted for the embedding table")
        weights = (1 - self.embedding_floor) * counts / total + self.embedding_floor / V
        return EmbeddingPCA.fit(embedding.weight.detach(), weights, total), counts

    def _replace_embedding(self, model: nn.Module, name: str, embedding: nn.Embedding,
                           pca: EmbeddingPCA, counts: torch.Tensor, rank: int | None,
                           item: AffineBudgetItem) -> ModuleReport:
        notes: dict[str, Any] = {
            "kind": "embedding", "embedding_floor": self.embedding_floor,
            "calibration_tokens": int(counts.sum()),
            "distinct_tokens_seen": int((counts > 0).sum()),
        }
        spectrum = [float(s) for s in pca.spectrum]
        dense = item.dense_cost()
        if rank is None:
            return ModuleReport(name, item.out_features, item.in_features, None, dense, dense,
                                0.0, 0.0, 1.0, spectrum, notes)
        table, basis, mean = pca.factors(rank)
        dtype = embedding.weight.dtype
        new = FactorizedEmbedding.from_factors(
            table.to(dtype), basis.to(dtype), mean.to(dtype), embedding.padding_idx,
        ).to(embedding.weight.device)
        if not all(torch.isfinite(p).all() for p in new.parameters()):
            raise DataError(f"the PCA of embedding table '{name}' produced non-finite "
                            "factors; the table was left unchanged")
        E = embedding.weight.detach().to(torch.float64)
        approx = new.weight_product().detach().to(torch.float64)
        seen = counts > 0
        c = counts[seen]
        err = ((E[seen] - approx[seen]) ** 2).sum(1)
        rel_out = math.sqrt(float((c * err).sum() / (c * (E[seen] ** 2).sum(1)).sum()
                                  .clamp_min(1e-300)))
        rel_w = float((E - approx).norm() / E.norm().clamp_min(1e-300))
        total = float(pca.eigenvalues.sum()) or 1.0
        energy_kept = float(pca.eigenvalues[:rank].sum()) / total
        replace_module(model, name, new)
        return ModuleReport(name, item.out_features, item.in_features, rank, dense,
                            item.cost(rank), rel_out, rel_w, energy_kept, spectrum, notes)


def input_embedding(model: nn.Module) -> tuple[str, nn.Embedding]:
    """Name and module of ``model.get_input_embeddings()``; errors say what is expected."""
    getter = getattr(model, "get_input_embeddings", None)
    embedding = getter() if callable(getter) else None
    if not isinstance(embedding, nn.Embedding):
        raise ConfigError(f"embeddings=True needs a model whose get_input_embeddings() returns "
                          f"an nn.Embedding; {type(model).__name__} gives "
                          f"{type(embedding).__name__}")
    out = getattr(model, "get_output_embeddings", None)
    head = out() if callable(out) else None
    if head is not None and getattr(head, "weight", None) is embedding.weight:
        raise ConfigError(f"{type(model).__name__} ties its input embeddings to the output "
                          "layer: compressing the table would untie them and add parameters; "
                          "use embeddings=False for tied models")
    name = next(n for n, m in model.named_modules() if m is embedding)
    return name, embedding


def rank_for_keep(item: BudgetItem, keep: float, align: int = 1) -> int | None:
    """Largest multiple of ``align`` whose cost fits ``keep`` of the item's dense cost (at
    least ``align``); ``None`` (dense) for ``keep=1`` or where no such rank saves parameters."""
    if keep >= 1 or item.max_rank < align:
        return None
    budget = math.floor(keep * item.dense_cost())
    bias = item.cost(1) - (item.out_features + item.in_features)
    rank = (budget - bias) // (item.out_features + item.in_features)
    return max(align, min(int(rank), item.max_rank) // align * align)
