"""Benchmark: forward latency of compressed vs dense MiniLM at batch 1 and 32 (CPU).

Usage:  python benchmarks/latency.py [--keeps 0.8 0.6 0.4] [--repeats 10]
Writes benchmarks/results/latency.json and .md.

The predicted speedup is the ratio of forward FLOPs (linear layers at 2 x parameters per token
plus attention's 4 * seq * hidden per token and layer); the measured one is the ratio of median
wall times, dense and compressed measured alternately in the same process.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from common import RESULTS, write_results  # benchmarks/common.py (run as scripts)
from torch import nn

import lowrank as lr
from lowrank.calib import read_texts, tokenize
from lowrank.calib.data import TokenBatch
from lowrank.models import load_model
from lowrank.nn import LowRankLinear


def forward_flops(model: nn.Module, seq: int) -> float:
    """FLOPs per token of the encoder: linears (dense or factorized) plus attention products."""
    flops = 0.0
    for module in model.modules():
        if isinstance(module, LowRankLinear):
            flops += module.flops_per_token()
        elif isinstance(module, nn.Linear):
            flops += 2 * module.in_features * module.out_features
    cfg = model.config
    flops += cfg.num_hidden_layers * 4 * seq * cfg.hidden_size
    return flops


@torch.no_grad()
def timed(model: nn.Module, batch: TokenBatch) -> float:
    start = time.perf_counter()
    model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keeps", nargs="+", type=float, default=[0.8, 0.6, 0.4])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(RESULTS / "latency"))
    args = parser.parse_args()

    loaded = load_model(None)
    texts = read_texts(None, "evaluation")
    calib = tokenize(read_texts(None), loaded.tokenizer, args.seq_len, 128)
    stats = lr.calibrate(loaded.model, lr.SVDLLM(), calib)
    rows = []
    for keep in args.keeps:
        compressed = copy.deepcopy(loaded.model)
        lr.compress(compressed, lr.SVDLLM(keep=keep), stats=stats)
        for size in args.batches:
            tokens = tokenize(texts[:size] * (1 + size // len(texts)), loaded.tokenizer,
                              args.seq_len)
            ids = tokens.input_ids[:size]
            batch = TokenBatch(ids, torch.ones_like(ids))  # full-length sequences
            for model in (loaded.model, compressed):  # warm-up
                timed(model, batch)
            dense_t, comp_t = [], []
            for _ in range(args.repeats):
                dense_t.append(timed(loaded.model, batch))
                comp_t.append(timed(compressed, batch))
            measured = statistics.median(dense_t) / statistics.median(comp_t)
            predicted = forward_flops(loaded.model, args.seq_len) / forward_flops(
                compressed, args.seq_len)
            rows.append({"keep": keep, "batch": size, "dense_ms": 1e3 * statistics.median(dense_t),
                         "compressed_ms": 1e3 * statistics.median(comp_t),
                         "measured_speedup": measured, "predicted_speedup": predicted,
                         "fraction_of_predicted": measured / predicted})
            print(f"keep {keep} batch {size}: {measured:.2f}x measured, {predicted:.2f}x "
                  f"predicted", flush=True)
    lines = ["| keep | batch | dense ms | compressed ms | measured speedup | FLOP-predicted "
             "speedup | fraction of predicted |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['keep']} | {r['batch']} | {r['dense_ms']:.1f} | "
                     f"{r['compressed_ms']:.1f} | {r['measured_speedup']:.2f} | "
                     f"{r['predicted_speedup']:.2f} | {r['fraction_of_predicted']:.2f} |")
    lines += ["", f"all-MiniLM-L6-v2 compressed by SVD-LLM, sequences of {args.seq_len} "
              f"tokens, median of {args.repeats} alternating runs, "
              f"{torch.get_num_threads()} threads."]
    table = "\n".join(lines) + "\n"
    write_results(args.out, {"rows": rows}, table)


if __name__ == "__main__":
    main()
