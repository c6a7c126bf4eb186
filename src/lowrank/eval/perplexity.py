"""Perplexity of a causal language model on held-out text."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..calib.data import TokenizedText
from ..models.forward import causal_lm_loss


@torch.no_grad()
def perplexity(model: nn.Module, tokens: TokenizedText, batch_size: int = 16) -> float:
    """``exp`` of the mean next-token negative log-likelihood over all real tokens."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in tokens.batches(batch_size):
        nll, n = causal_lm_loss(model, batch.to(device))
        total += float(nll)
        count += n
    return math.exp(total / max(count, 1))
