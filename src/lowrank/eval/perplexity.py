"""Perplexity of a causal language model on held-out text."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..calib.data import TokenizedText
from ..errors import LowRankError
from ..models.forward import causal_lm_loss


@torch.no_grad()
def perplexity(model: nn.Module, tokens: TokenizedText, batch_size: int = 16) -> float:
    """``exp`` of the mean next-token negative log-likelihood over all real tokens.

    NaN or inf when the model's outputs are not finite (:class:`~lowrank.eval.Evaluator`
    refuses that); a finite mean too large for ``exp`` raises
    :class:`~lowrank.errors.LowRankError` instead of :class:`OverflowError`.
    """
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in tokens.batches(batch_size):
        nll, n = causal_lm_loss(model, batch.to(device))
        total += float(nll)
        count += n
    mean = total / max(count, 1)
    try:
        return math.exp(mean)
    except OverflowError:
        raise LowRankError(f"perplexity overflows: the mean next-token negative "
                           f"log-likelihood is {mean:.4g} nats, beyond what exp() can "
                           "represent; the model's predictions are far off (are its weights "
                           "corrupt?)") from None
