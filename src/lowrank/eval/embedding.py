"""Quality of an embedding model relative to the original: cosine and neighbour overlap."""

from __future__ import annotations

import torch
from torch import nn

from ..calib.data import TokenizedText
from ..models.forward import sentence_embeddings


@torch.no_grad()
def embed(model: nn.Module, tokens: TokenizedText, batch_size: int = 32) -> torch.Tensor:
    """Normalised mean-pooled sentence embeddings, one row per passage (float32, CPU)."""
    device = next(model.parameters()).device
    rows = [sentence_embeddings(model, b.to(device)).cpu() for b in tokens.batches(batch_size)]
    return torch.cat(rows)


def knn_overlap(reference: torch.Tensor, candidate: torch.Tensor, k: int = 10) -> float:
    """Mean fraction of each item's ``k`` nearest neighbours (cosine, self excluded) that the
    candidate embeddings share with the reference ones."""
    n = reference.shape[0]
    if n < 2:
        return 1.0
    k = min(k, n - 1)

    def neighbours(e: torch.Tensor) -> torch.Tensor:
        sim = e @ e.T
        sim.fill_diagonal_(-float("inf"))
        return sim.topk(k, dim=1).indices

    a, b = neighbours(reference), neighbours(candidate)
    hits = (a.unsqueeze(2) == b.unsqueeze(1)).any(2).float().sum(1)
    return float((hits / k).mean())


def embedding_agreement(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """``cosine``: mean cosine between matching rows; ``knn10_overlap``: neighbour overlap."""
    cos = (nn.functional.normalize(reference, dim=-1)
           * nn.functional.normalize(candidate, dim=-1)).sum(-1)
    return {"cosine": float(cos.mean()), "knn10_overlap": knn_overlap(reference, candidate)}
