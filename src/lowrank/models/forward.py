"""Model-family aware forward passes: sentence embeddings and causal-LM losses."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ..calib.data import TokenBatch


def hidden_states(model: nn.Module, batch: TokenBatch) -> torch.Tensor:
    """Last hidden states ``(batch, seq, hidden)`` of an encoder (or logits of a causal LM)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state") and out.last_hidden_state is not None:
        return out.last_hidden_state
    if hasattr(out, "logits"):
        return out.logits
    return out[0]


def sentence_embeddings(model: nn.Module, batch: TokenBatch) -> torch.Tensor:
    """Mean-pooled over real tokens and L2-normalised, as sentence-transformers' MiniLM does."""
    states = hidden_states(model, batch)
    mask = batch.attention_mask.unsqueeze(-1).to(states.dtype)
    pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    return nn.functional.normalize(pooled.float(), dim=-1)


def causal_lm_loss(model: nn.Module, batch: TokenBatch) -> tuple[torch.Tensor, int]:
    """Summed next-token negative log-likelihood over real tokens, and the number of targets."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    logits = out.logits[:, :-1].float()
    targets = batch.input_ids[:, 1:]
    valid = batch.attention_mask[:, 1:].bool()
    nll = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )
    nll = nll.reshape(targets.shape)[valid]
    return nll.sum(), int(valid.sum())


def contrastive_loss(
    model: nn.Module, first: TokenBatch, second: TokenBatch, scale: float = 20.0
) -> torch.Tensor:
    """In-batch contrastive loss between the two halves of each passage (symmetric InfoNCE).

    This is the training objective of sentence-embedding models such as all-MiniLM-L6-v2
    (multiple-negatives ranking loss with cosine similarity scaled by 20).
    """
    a = sentence_embeddings(model, first)
    b = sentence_embeddings(model, second)
    logits = scale * a @ b.T
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (nn.functional.cross_entropy(logits, labels)
                  + nn.functional.cross_entropy(logits.T, labels))
