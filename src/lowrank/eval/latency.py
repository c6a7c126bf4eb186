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
    """Median seconds of ``model(batch)`` over ``repeats`` timed runs (a token batch, or an
    image batch with ``pixel_values``)."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    inputs = {"pixel_values": batch.pixel_values} if hasattr(batch, "pixel_values") else \
        {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        model(**inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)
