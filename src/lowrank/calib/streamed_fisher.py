""":func:`~lowrank.calib.stats.collect_fisher` one block at a time, for the layer-wise pipeline.

The diagonal Fisher of a weight needs the gradient of the model's loss, which flows from the
head back through every block. Streamed: the micro-batches go forward through the blocks once
(each block's input is kept), the model's own head (:func:`~lowrank.blocks.replaying`) turns
the last hidden states into the loss and its gradient, and the blocks are then visited in
reverse, each one onloaded, re-run on its stored input and differentiated with respect to
that input (the gradient handed to the block before it) and to its targeted weights, whose
squared gradients are summed per micro-batch exactly as the whole-model pass does. Memory:
the micro-batches' hidden states at every block boundary, one block's weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..blocks import (
    BlockAccess,
    forward_stream,
    replaying,
    run_block,
    with_hidden,
)
from ..errors import DataError
from ..utils.progress import progress
from .data import TokenizedText
from .stats import FisherStats, fisher_steps, non_finite


def streamed_fisher(access: BlockAccess, groups: list[dict[str, nn.Module]],
                    data: TokenizedText, loss: str, *, tokenizer: Any = None,
                    batch_size: int = 8, quiet: bool = True) -> dict[str, FisherStats]:
    """Row and column sums of the squared per-micro-batch gradients of ``loss`` (as
    :func:`~lowrank.calib.stats.collect_fisher`) for the modules of ``groups`` (one dict per
    block of ``access``)."""
    from ..models.forward import causal_lm_loss, contrastive_loss

    model = access.model
    steps = fisher_steps(data, loss, tokenizer, batch_size)
    entries = [b.to(access.device) for step in steps for b in step]
    calls, hidden, as_tuple = forward_stream(access, entries, "fisher: forward", quiet=quiet)
    finals = [h.detach().requires_grad_(True) for h in hidden[-1]]
    seeds: list[torch.Tensor | None] = [None] * len(entries)
    owner: list[list[int]] = []
    with replaying(model, finals, as_tuple), torch.enable_grad():
        for step in steps:
            first = len([e for s in owner for e in s])
            members = list(range(first, first + len(step)))
            owner.append(members)
            if loss == "contrastive":
                if step[0].input_ids.shape[0] < 2:  # a lone passage has no in-batch negatives
                    for b in step:  # keep the replay aligned: run its forwards anyway
                        model(input_ids=b.input_ids, attention_mask=b.attention_mask)
                    continue
                value = contrastive_loss(model, *(b.to(access.device) for b in step))
            else:
                total, count = causal_lm_loss(model, step[0].to(access.device))
                value = total / max(count, 1)
            grads = torch.autograd.grad(value, [finals[e] for e in members])
            for e, g in zip(members, grads, strict=True):
                seeds[e] = g
    out: dict[str, FisherStats] = {}
    for i in progress(reversed(range(len(access))), "fisher: backward", quiet=quiet):
        block = access.block(i)
        group = groups[i]
        weights = {name: m.weight for name, m in group.items()}
        saved = {name: w.requires_grad for name, w in weights.items()}
        for name, w in weights.items():
            out[name] = FisherStats(torch.zeros(w.shape[0], dtype=torch.float64,
                                                device=w.device),
                                    torch.zeros(w.shape[1], dtype=torch.float64,
                                                device=w.device))
            w.requires_grad_(True)
        try:
            for members in owner:
                if any(seeds[e] is None for e in members):
                    continue
                step_grads = {name: None for name in weights}
                for e in members:
                    x = hidden[i][e].detach().requires_grad_(True)
                    with torch.enable_grad():
                        y = run_block(block, with_hidden(calls[e], x))
                        got = torch.autograd.grad(y, [x, *weights.values()], seeds[e],
                                                  allow_unused=True)
                    seeds[e] = got[0]
                    for name, g in zip(weights, got[1:], strict=True):
                        if g is not None:
                            step_grads[name] = g if step_grads[name] is None \
                                else step_grads[name] + g
                for name, g in step_grads.items():
                    if g is None:
                        continue
                    g2 = g.detach().to(torch.float64) ** 2
                    row_sum = g2.sum(1)
                    if not bool(torch.isfinite(row_sum).all()):
                        raise DataError(non_finite(f"'{loss}' loss gradients", name, g.dtype))
                    out[name].row_sum += row_sum
                    out[name].col_sum += g2.sum(0)
                    out[name].batches += 1
        finally:
            for name, w in weights.items():
                w.requires_grad_(saved[name])
        access.release(i)
    return out
