"""Quality of an embedding model relative to the original: cosine and neighbour overlap."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..calib.data import TokenizedText
from ..models.forward import sentence_embeddings

if TYPE_CHECKING:
    from ..data.images import Images


@torch.no_grad()
def embed(model: nn.Module, tokens: TokenizedText, batch_size: int = 32) -> torch.Tensor:
    """Normalised mean-pooled sentence embeddings, one row per passage (float32, CPU)."""
    device = next(model.parameters()).device
    rows = [sentence_embeddings(model, b.to(device)).cpu() for b in tokens.batches(batch_size)]
    return torch.cat(rows)


@torch.no_grad()
def embed_images(model: nn.Module, images: Images, batch_size: int = 32) -> torch.Tensor:
    """Normalised pooled outputs of a vision model, one row per image (float32, CPU).

    The pooled output is the model's ``pooler_output`` flattened (global average pooling for
    ResNet/ConvNeXt/RegNet); a model without one is averaged over the spatial or sequence
    positions of its last hidden state.
    """
    device = next(model.parameters()).device
    rows = []
    for batch in images.batches(batch_size):
        out = model(pixel_values=batch.pixel_values.to(device))
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            hidden = out if isinstance(out, torch.Tensor) else \
                getattr(out, "last_hidden_state", None)
            hidden = out[0] if hidden is None else hidden
            # (batch, channels, h, w) -> mean over h, w; (batch, seq, dim) -> mean over seq
            pooled = hidden.mean(dim=(2, 3)) if hidden.ndim == 4 else \
                hidden.mean(dim=1) if hidden.ndim == 3 else hidden
        rows.append(nn.functional.normalize(pooled.flatten(1).float(), dim=-1).cpu())
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
