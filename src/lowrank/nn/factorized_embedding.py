"""``FactorizedEmbedding``: an embedding table stored as a thin table times a basis, plus a mean.

An ``nn.Embedding`` (V x d) is replaced by ``E' = (E - 1 mu^T) U_k`` (V x k), the basis
``U_k`` (d x k, orthonormal columns) and the mean ``mu`` (d): row ``v`` is looked up as
``E'[v] @ U_k^T + mu`` (the embedding half of Atomic Feature Mimicking, "Unified Low-rank
Compression Framework for Click-through Rate Prediction", KDD 2024). Storage is
``k (V + d) + d`` instead of ``V d``.
"""

from __future__ import annotations

import torch
from torch import nn

from .kinds import register_module_kind
from .manifest import DTYPE, optional_int, positive
from .protocol import StructuredLayer


@register_module_kind
class FactorizedEmbedding(StructuredLayer):
    """Embedding lookup through a rank-``rank`` table: ``forward(ids) = table[ids] @ basis^T
    + bias``.

    Parameters: ``table`` (num_embeddings x rank), ``basis`` (embedding_dim x rank) and
    ``bias`` (embedding_dim). ``padding_idx`` behaves as in ``nn.Embedding``: the padding
    row of ``table`` receives no gradient, and :meth:`to_dense_module` carries it over. Its
    output is the factorized padding row like any other row (the models this serves mask
    padding positions, so it has no effect on their outputs).
    """

    manifest_fields = (positive("rank"), positive("num_embeddings"), positive("embedding_dim"),
                       optional_int("padding_idx"), DTYPE)

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        rank: int,
        padding_idx: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if min(num_embeddings, embedding_dim) < 1:
            raise ValueError(f"FactorizedEmbedding needs positive sizes, got "
                             f"num_embeddings={num_embeddings}, embedding_dim={embedding_dim}")
        if not 1 <= rank <= embedding_dim:
            raise ValueError(f"rank must be in [1, {embedding_dim}] for a {num_embeddings}x"
                             f"{embedding_dim} table, got {rank}")
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx must be within num_embeddings "
                                 f"({num_embeddings}), got {padding_idx}")
            padding_idx = padding_idx % num_embeddings
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.rank = rank
        self.padding_idx = padding_idx
        kw = {"device": device, "dtype": dtype}
        self.table = nn.Parameter(torch.empty(num_embeddings, rank, **kw))
        self.basis = nn.Parameter(torch.empty(embedding_dim, rank, **kw))
        self.bias = nn.Parameter(torch.empty(embedding_dim, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Orthonormal basis, unit-normal table rows (``nn.Embedding``'s init), zero mean."""
        nn.init.normal_(self.table)
        nn.init.orthogonal_(self.basis)
        nn.init.zeros_(self.bias)
        if self.padding_idx is not None:
            with torch.no_grad():
                self.table[self.padding_idx].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        codes = nn.functional.embedding(ids, self.table, self.padding_idx)
        return nn.functional.linear(codes, self.basis, self.bias)

    @classmethod
    def from_factors(cls, table: torch.Tensor, basis: torch.Tensor, bias: torch.Tensor,
                     padding_idx: int | None = None) -> FactorizedEmbedding:
        """Build from given tensors (copied, in ``table``'s dtype and device)."""
        if table.ndim != 2 or basis.ndim != 2 or basis.shape[1] != table.shape[1] \
                or bias.shape != (basis.shape[0],):
            raise ValueError(f"factors do not chain: table {tuple(table.shape)}, basis "
                             f"{tuple(basis.shape)}, bias {tuple(bias.shape)}: expected "
                             "(V, k), (d, k), (d,)")
        layer = cls(table.shape[0], basis.shape[0], table.shape[1], padding_idx,
                    device=table.device, dtype=table.dtype)
        with torch.no_grad():
            layer.table.copy_(table)
            layer.basis.copy_(basis)
            layer.bias.copy_(bias)
        return layer

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, rank: int,
                       weights: torch.Tensor | None = None) -> FactorizedEmbedding:
        """Centred PCA of the table's rows, weighted by ``weights`` (V; default uniform):
        ``table = (E - 1 mu^T) U_k``, ``basis = U_k``, ``bias = mu`` (computed in float64).

        This minimises ``sum_v w_v ||e_v - e'_v||^2`` over rank-``rank`` affine
        approximations, i.e. the expected squared lookup error under token frequencies ``w``.
        """
        from ..linalg.output_pca import output_pca, weighted_row_moments

        E = embedding.weight.detach()
        if weights is None:
            weights = torch.ones(E.shape[0], dtype=torch.float64, device=E.device)
        mean, cov = weighted_row_moments(E, weights)
        basis = output_pca(cov, rank).eigenvectors
        table = (E.to(torch.float64) - mean) @ basis
        dtype = E.dtype
        return cls.from_factors(table.to(dtype), basis.to(dtype), mean.to(dtype),
                                embedding.padding_idx)

    def dense_weight(self) -> torch.Tensor:
        """The represented dense table ``table @ basis^T + bias`` (V x d)."""
        return self.table @ self.basis.T + self.bias

    def to_dense_module(self) -> nn.Embedding:
        """Export as a dense ``nn.Embedding`` (table computed in float64)."""
        dense = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx,
                             device=self.device, dtype=self.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.exact_dense_weight())
        return dense

    def flops_per_token(self) -> int:
        """Multiply-accumulates x 2 of one lookup (the projection to ``embedding_dim``)."""
        return 2 * self.rank * self.embedding_dim

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return (f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, "
                f"rank={self.rank}{pad}")
