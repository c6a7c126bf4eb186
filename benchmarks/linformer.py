"""Benchmark: latency vs sequence length of standard attention, Linformer and LRT layers.

Usage:  python benchmarks/linformer.py [--lengths 128 256 ... 4096] [--proj-dim 128] [--rank 64]
Writes benchmarks/results/linformer.json and .md and prints the markdown table.

One transformer block of the embedded MiniLM's shape (hidden 384, 12 heads, intermediate 1536,
random weights, batch 1) run three ways: standard (scaled-dot-product) attention; Linformer
attention (keys/values projected to ``--proj-dim`` rows along the sequence); and the Low-Rank
Transformer (every linear factorized at ``--rank``, standard attention). Median wall time of
``--repeats`` forwards after one warm-up. The Greenformers thesis expects LRT to pay off on
short inputs and Linformer on long ones (past about 512 tokens).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from common import RESULTS, write_results  # benchmarks/common.py (run as scripts)

from lowrank.compress.lrt import low_rank_transformer
from lowrank.nn.linformer import linformer_attention


def _block(max_len: int):
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    config = BertConfig(hidden_size=384, num_attention_heads=12, intermediate_size=1536,
                        max_position_embeddings=max_len, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, attn_implementation="sdpa")
    torch.manual_seed(0)
    return BertLayer(config).eval()


class _Wrap(torch.nn.Module):  # linformer_attention / low_rank_transformer walk a model
    def __init__(self, layer, max_len):
        super().__init__()
        self.layer = torch.nn.ModuleList([layer])
        self.config = type("C", (), {"max_position_embeddings": max_len})()

    def forward(self, x):
        return self.layer[0](x)


def _time(model, x, repeats):
    with torch.no_grad():
        model(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+",
                        default=[128, 256, 512, 1024, 2048, 4096])
    parser.add_argument("--proj-dim", type=int, default=128)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "linformer"))
    args = parser.parse_args()
    max_len = max(args.lengths)
    standard = _Wrap(_block(max_len), max_len)
    lin = copy.deepcopy(standard)
    linformer_attention(lin, proj_dim=args.proj_dim, max_seq_len=max_len)
    lrt = copy.deepcopy(standard)
    low_rank_transformer(lrt, args.rank, targets=["re:.*"])
    params = {name: sum(p.numel() for p in m.parameters())
              for name, m in (("standard", standard), ("linformer", lin), ("lrt", lrt))}
    rows = []
    for n in args.lengths:
        x = torch.randn(1, n, 384)
        row = {"seq_len": n}
        for name, model in (("standard", standard), ("linformer", lin), ("lrt", lrt)):
            row[f"{name}_ms"] = 1e3 * _time(model, x, args.repeats)
        rows.append(row)
        print(f"n={n}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if k != "seq_len"),
              flush=True)
    table = (f"| seq len | standard ms | Linformer (k={args.proj_dim}) ms | "
             f"LRT (r={args.rank}) ms |\n| --- | --- | --- | --- |\n")
    for r in rows:
        table += (f"| {r['seq_len']} | {r['standard_ms']:.1f} | {r['linformer_ms']:.1f} | "
                  f"{r['lrt_ms']:.1f} |\n")
    table += (f"\nParameters of the block: standard {params['standard']:,}, Linformer "
              f"{params['linformer']:,} (E, F for {max_len} positions), LRT {params['lrt']:,}.\n")
    write_results(args.out, {"rows": rows, "params": params, "proj_dim": args.proj_dim,
                             "rank": args.rank, "threads": torch.get_num_threads()}, table)


if __name__ == "__main__":
    main()
