"""Benchmark: rank allocators x keep with SVD-LLM on the embedded default model and text.

Usage:  python benchmarks/allocators.py [--allocators uniform energy welore svdllm-v2
                                         sensitivity sensitivity-sqrt]
                                        [--keeps 0.8 0.6] [--align 1]
Writes benchmarks/results/allocators.json and .md and prints the markdown table.

Calibration statistics (input Grams) are collected once on the calibration split and shared by
all runs; each run compresses a fresh copy of the model with ``SVDLLM(keep=k, alloc=a)`` and is
measured on the held-out split and on licence text (another domain) against the original
model's embeddings. ``rank reduction`` is
``sum(min(m, n) - rank) / sum min(m, n)`` over the targeted matrices (dense ones prune
nothing): WeLore's unit, reported next to the parameter keep for comparability (spec §0.1).
"""

from __future__ import annotations

import argparse
import copy
import time

from common import RESULTS, write_results  # benchmarks/common.py (run as scripts)

import lowrank as lr
from lowrank.calib import read_texts, tokenize
from lowrank.eval import Evaluator
from lowrank.models import load_model

SMALL_DETAILS = ("tau", "rank_reduction_at_tau", "dense", "scale", "fraction_of_break_even",
                 "energy_kept_threshold", "constraints")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allocators", nargs="+",
                        default=["uniform", "energy", "welore", "svdllm-v2", "sensitivity",
                                 "sensitivity-sqrt"])
    parser.add_argument("--keeps", nargs="+", type=float, default=[0.8, 0.6])
    parser.add_argument("--align", type=int, default=1, help="rank alignment (rank_align)")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--out", default=str(RESULTS / "allocators"))
    args = parser.parse_args()

    loaded = load_model(None)
    calib = tokenize(read_texts(None), loaded.tokenizer, args.seq_len, args.samples)
    held_out = tokenize(read_texts(None, "evaluation"), loaded.tokenizer, args.seq_len)
    evaluator = Evaluator(loaded.kind, held_out)
    reference = evaluator.reference(loaded.model)
    other = Evaluator(loaded.kind, tokenize(read_texts("licenses"), loaded.tokenizer,
                                            args.seq_len, 400))
    other.reference(loaded.model)

    t0 = time.perf_counter()
    stats = lr.calibrate(loaded.model, lr.SVDLLM(), calib, tokenizer=loaded.tokenizer)
    calib_seconds = time.perf_counter() - t0

    rows = []
    for alloc in args.allocators:
        for keep in args.keeps:
            model = copy.deepcopy(loaded.model)
            config = lr.SVDLLM(keep=keep, alloc=alloc, rank_align=args.align)
            t = time.perf_counter()
            result = lr.compress(model, config, data=calib, tokenizer=loaded.tokenizer,
                                 stats=stats)  # data: the sensitivity allocator's probes
            seconds = time.perf_counter() - t
            quality = evaluator.measure(model)
            quality_other = other.measure(model, latency=False)
            ranks = [m.rank for m in result.modules]
            full = sum(min(m.out_features, m.in_features) for m in result.modules)
            pruned = sum(min(m.out_features, m.in_features) - m.rank for m in result.modules
                         if m.rank is not None)
            errors = [m.rel_output_error for m in result.modules
                      if m.rel_output_error is not None]
            details = result.allocation.get("details", {})
            rows.append({
                "allocator": alloc, "keep_target": keep, "keep_actual": result.keep_actual,
                "params_after": result.params_after, "bytes_after": result.bytes_after,
                "cosine": quality["cosine"], "knn10_overlap": quality["knn10_overlap"],
                "cosine_other_domain": quality_other["cosine"],
                "latency_ratio": quality["latency_s"] / reference["latency_s"],
                "dense_matrices": sum(r is None for r in ranks),
                "matrices": len(ranks),
                "rank_min": min((r for r in ranks if r is not None), default=None),
                "rank_max": max((r for r in ranks if r is not None), default=None),
                "rank_reduction": pruned / full,
                "mean_rel_output_error": sum(errors) / len(errors) if errors else None,
                "ranks": {m.name: m.rank for m in result.modules},
                "details": {k: details[k] for k in SMALL_DETAILS if k in details},
                "compress_seconds": seconds, "tag": result.tag,
            })
            print(f"{alloc:9s} keep {keep}: cosine {quality['cosine']:.4f} "
                  f"knn {quality['knn10_overlap']:.4f} ({seconds:.1f} s)", flush=True)

    table = render(rows, calib_seconds, len(calib), len(held_out), args.align)
    payload = {"model": loaded.name, "method": "svdllm", "rank_align": args.align,
               "calibration_passages": len(calib), "evaluation_passages": len(held_out),
               "seq_len": args.seq_len, "calibration_seconds": calib_seconds, "rows": rows}
    write_results(args.out, payload, table)


def render(rows: list[dict], calib_seconds: float, n_calib: int, n_eval: int,
           align: int) -> str:
    lines = [
        "| allocator | keep target | keep actual | cosine | 10-NN overlap | cosine (licences) "
        "| mean rel. output error | dense / matrices | rank range | rank reduction | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        err = "n/a" if r["mean_rel_output_error"] is None else f"{r['mean_rel_output_error']:.4f}"
        lines.append(f"| {r['allocator']} | {r['keep_target']} | {r['keep_actual']:.4f} | "
                     f"{r['cosine']:.4f} | {r['knn10_overlap']:.4f} | "
                     f"{r['cosine_other_domain']:.4f} | {err} | "
                     f"{r['dense_matrices']} / {r['matrices']} | "
                     f"{r['rank_min']}-{r['rank_max']} | {r['rank_reduction']:.4f} | "
                     f"{r['compress_seconds']:.1f} |")
    lines.append("")
    lines.append(f"all-MiniLM-L6-v2, SVD-LLM truncation, rank alignment {align}; {n_calib} "
                 f"calibration passages, {n_eval} held-out passages of the embedded text; "
                 f"shared calibration (Grams) {calib_seconds:.1f} s. Quality: cosine and 10-NN "
                 f"overlap of sentence embeddings against the original model.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
