"""The input-embedding table as one more matrix of a factorization budget.

An embedding table (V x d) is a linear map from one-hot token vectors, whose input Gram is the
diagonal of token counts: the output-optimal rank-k approximation is the token-frequency
weighted PCA of its rows (the embedding half of Atomic Feature Mimicking, Yu et al., "Unified
Low-rank Compression Framework for Click-through Rate Prediction", KDD 2024 ADS; spec §11).
The rows ``e_v`` are weighted by ``w_v = (1 - f) p_v + f / V`` (``p_v``: calibration token
frequencies, ``f``: ``embedding_floor``); the table becomes ``E' = (E - 1 mu^T) U_k`` followed
by a linear with weight ``U_k`` and bias ``mu`` (:class:`~lowrank.nn.FactorizedEmbedding`),
where ``mu`` and ``U_k`` are the weighted mean and top-k principal directions. The floor mixes
in the uniform distribution so tokens the calibration text never contains still shape the
basis (``f = 1``: plain PCA of the table; ``f = 0``: calibration frequencies only).

Every factorization method (SVD-LLM, AFM, ...) can put the table in its budget
(``embeddings=True``, :func:`lowrank.compress.factorize.factorize_with_embedding`): with
``embedding_keep=None`` it shares one allocation with the linears, so an allocator that
measures end-to-end sensitivity spends the parameters where they buy the most quality; a number
fixes the table's own kept fraction. This module holds the table's pieces: its budget item,
PCA, the probe's out-of-sample trial and the replacement.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..alloc.budget import BudgetItem
from ..calib.data import TokenizedText
from ..calib.stats import CalibrationStats
from ..errors import ConfigError, DataError
from ..linalg.output_pca import output_pca, weighted_row_moments
from ..nn import FactorizedEmbedding
from ..nn.accounting import linear_params
from ..surgery import replace_module
from .result import ModuleReport


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

    def module(self, rank: int, like: nn.Embedding) -> FactorizedEmbedding:
        """The rank-``rank`` table in ``like``'s dtype and device."""
        table, basis, mean = self.factors(rank)
        dtype = like.weight.dtype
        return FactorizedEmbedding.from_factors(
            table.to(dtype), basis.to(dtype), mean.to(dtype), like.padding_idx,
        ).to(like.weight.device)


def input_embedding(model: nn.Module) -> tuple[str, nn.Embedding]:
    """Name and module of ``model.get_input_embeddings()``; errors say what is expected."""
    getter = getattr(model, "get_input_embeddings", None)
    embedding = getter() if callable(getter) else None
    if not isinstance(embedding, nn.Embedding):
        raise ConfigError(f"embeddings=True needs a model whose get_input_embeddings() returns "
                          f"an nn.Embedding; {type(model).__name__} gives "
                          f"{type(embedding).__name__}")
    if ties_input_embeddings(model):
        raise ConfigError(f"{type(model).__name__} ties its input embeddings to the output "
                          "layer: compressing the table would untie them and add parameters; "
                          "use embeddings=False for tied models")
    name = next(n for n, m in model.named_modules() if m is embedding)
    return name, embedding


def ties_input_embeddings(model: nn.Module) -> bool:
    """Whether the input-embedding table is shared with the output layer."""
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    table = get_in() if callable(get_in) else None
    head = get_out() if callable(get_out) else None
    return (table is not None and head is not None
            and getattr(head, "weight", None) is getattr(table, "weight", None))


def rank_for_keep(item: BudgetItem, keep: float, align: int = 1) -> int | None:
    """Largest multiple of ``align`` whose cost fits ``keep`` of the item's dense cost (at
    least ``align``); ``None`` (dense) for ``keep=1`` or where no such rank saves parameters."""
    if keep >= 1 or item.max_rank < align:
        return None
    budget = math.floor(keep * item.dense_cost())
    bias = item.cost(1) - (item.out_features + item.in_features)
    rank = (budget - bias) // (item.out_features + item.in_features)
    return max(align, min(int(rank), item.max_rank) // align * align)


def embedding_pca(embedding: nn.Embedding, stats: CalibrationStats | None,
                  floor: float) -> tuple[EmbeddingPCA, torch.Tensor]:
    """The floored frequency-weighted PCA of the table's rows, and the token counts."""
    V = embedding.num_embeddings
    counts = None if stats is None else stats.token_counts
    if counts is None:
        raise DataError("compressing the embedding table needs the calibration token counts "
                        "(CalibrationStats.token_counts): recollect the statistics with this "
                        "version of lowrank")
    counts = counts.to(embedding.weight.device, torch.float64)
    if counts.numel() > V and bool(counts[V:].any()):
        raise DataError(f"calibration token ids reach {int(counts.nonzero().max())}, beyond "
                        f"the embedding table's {V} rows: statistics from another tokenizer?")
    counts = torch.nn.functional.pad(counts[:V], (0, max(0, V - counts.numel())))
    if float(counts.sum()) <= 0:
        raise DataError("no calibration tokens were counted for the embedding table")
    return pca_from_counts(embedding, counts, floor), counts


def pca_from_counts(embedding: nn.Embedding, counts: torch.Tensor, floor: float
                    ) -> EmbeddingPCA:
    """The PCA of the rows under ``w = (1 - floor) counts / total + floor / V``."""
    total = float(counts.sum())
    weights = (1 - floor) * counts / total + floor / embedding.num_embeddings
    return EmbeddingPCA.fit(embedding.weight.detach(), weights, total)


def held_out_trial(embedding: nn.Embedding, counts: torch.Tensor, floor: float,
                   passages: TokenizedText) -> Callable[[int], FactorizedEmbedding]:
    """The table at a rank for the sensitivity probe, out of sample: the probe passages'
    tokens are taken out of the counts its PCA is fitted on, so tokens that only the probe text
    contains count as unseen (as they would on new text), instead of the in-sample optimum."""
    ids = passages.input_ids[passages.attention_mask.bool()].to(counts.device)
    ids = ids[ids < counts.numel()]
    held = torch.bincount(ids, minlength=counts.numel()).to(counts.dtype)
    rest = (counts - held).clamp_min(0)
    pca = pca_from_counts(embedding, rest if float(rest.sum()) > 0 else counts, floor)
    return lambda rank: pca.module(rank, embedding)


def replace_embedding(model: nn.Module, name: str, embedding: nn.Embedding, pca: EmbeddingPCA,
                      counts: torch.Tensor, rank: int | None, item: AffineBudgetItem,
                      floor: float) -> ModuleReport:
    """Put the rank-``rank`` table in place (``None``: leave it dense) and report it."""
    notes: dict[str, Any] = {
        "kind": "embedding", "embedding_floor": floor,
        "calibration_tokens": int(counts.sum()),
        "distinct_tokens_seen": int((counts > 0).sum()),
    }
    if item.sensitivity is not None:
        notes["sensitivity"] = float(item.sensitivity)
    spectrum = [float(s) for s in pca.spectrum]
    dense = item.dense_cost()
    if rank is None:
        return ModuleReport(name, item.out_features, item.in_features, None, dense, dense,
                            0.0, 0.0, 1.0, spectrum, notes)
    new = pca.module(rank, embedding)
    if not all(torch.isfinite(p).all() for p in new.parameters()):
        raise DataError(f"the PCA of embedding table '{name}' produced non-finite factors; "
                        "the table was left unchanged")
    E = embedding.weight.detach().to(torch.float64)
    approx = new.dense_weight().detach().to(torch.float64)
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
