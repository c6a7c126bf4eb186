"""Wall-clock latency of a forward pass (median of repeats, after a warm-up)."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from ..calib.data import TokenBatch


@torch.no_grad()
def forward_latency(model: nn.Module, batch: TokenBatch, repeats: int = 5, warmup: int = 1
                    ) -> float:
    """Median seconds of ``model(batch)`` over ``repeats`` timed runs."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)
