"""Benchmark: EoRA compensation of RTN quantization and magnitude pruning on the embedded model.

Usage:  python benchmarks/eora.py [--rank 32] [--samples 256] [--seq-len 128]
Writes benchmarks/results/eora.json and .md and prints the markdown table.

Configurations: int4 RTN alone and + EoRA, int8 RTN alone, 2:4 magnitude pruning alone and
+ EoRA (group size 128, floor 1e-6, the defaults). Calibration statistics (input Grams of the
original model) are collected once on the calibration split; quality is the embedding cosine
and 10-NN overlap against the original model on the held-out split. "recovered" is the
fraction of the quality lost to the base compression that EoRA wins back:
``(cos_eora - cos_base) / (1 - cos_base)``.
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
from lowrank.nn import count_bytes


def configurations(rank: int) -> list[tuple[str, str | None, lr.CompressionConfig]]:
    """(label, label of the uncompensated base it compensates, config)."""
    return [
        ("int4 RTN", None, lr.RTN(bits=4)),
        (f"int4 RTN + EoRA r{rank}", "int4 RTN", lr.EoRA(rank=rank, base="quant-int4")),
        ("int8 RTN", None, lr.RTN(bits=8)),
        ("2:4 magnitude", None, lr.MagnitudePrune(pattern="2:4")),
        (f"2:4 magnitude + EoRA r{rank}", "2:4 magnitude",
         lr.EoRA(rank=rank, base="prune-2:4")),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--out", default=str(RESULTS / "eora"))
    args = parser.parse_args()

    loaded = load_model(None)
    calib = tokenize(read_texts(None, "calibration"), loaded.tokenizer, args.seq_len,
                     args.samples)
    held_out = tokenize(read_texts(None, "evaluation"), loaded.tokenizer, args.seq_len)
    evaluator = Evaluator(loaded.kind, held_out)
    evaluator.reference(loaded.model)

    t0 = time.perf_counter()
    stats = lr.calibrate(loaded.model, lr.EoRA(), calib, tokenizer=loaded.tokenizer)
    calib_seconds = time.perf_counter() - t0

    rows: list[dict] = []
    by_label: dict[str, dict] = {}
    for label, base_label, config in configurations(args.rank):
        model = copy.deepcopy(loaded.model)
        t = time.perf_counter()
        result = lr.compress(model, config, stats=stats)
        seconds = time.perf_counter() - t
        quality = evaluator.measure(model)
        errors = [m.rel_output_error for m in result.modules]
        base_errors = [m.notes.get("base_rel_output_error", m.rel_output_error)
                       for m in result.modules]
        targeted_bytes_before = sum(4 * (m.in_features * m.out_features + m.out_features)
                                    for m in result.modules)  # float32 weights + biases
        row = {
            "configuration": label, "method": config.to_dict(),
            "cosine": quality["cosine"], "knn10_overlap": quality["knn10_overlap"],
            "targeted_params_after": result.targeted_params_after,
            "targeted_params_before": result.targeted_params_before,
            "targeted_bytes_before": targeted_bytes_before,
            "targeted_bytes_after": sum(count_bytes(model.get_submodule(m.name))
                                        for m in result.modules),
            "bytes_after": result.bytes_after,
            "mean_rel_output_error": sum(errors) / len(errors),
            "mean_base_rel_output_error": sum(base_errors) / len(base_errors),
            "compress_seconds": seconds, "tag": result.tag, "recovered": None,
            "compensates": base_label,
        }
        if base_label is not None:
            base_cos = by_label[base_label]["cosine"]
            row["recovered"] = (row["cosine"] - base_cos) / max(1.0 - base_cos, 1e-12)
        rows.append(row)
        by_label[label] = row
        extra = "" if row["recovered"] is None else f", recovered {row['recovered']:.3f}"
        print(f"{label:28s}: cosine {row['cosine']:.4f} knn {row['knn10_overlap']:.4f} "
              f"({seconds:.1f} s{extra})", flush=True)

    table = render(rows, calib_seconds, len(calib), len(held_out))
    payload = {"model": loaded.name, "rank": args.rank, "calibration_passages": len(calib),
               "evaluation_passages": len(held_out), "seq_len": args.seq_len,
               "calibration_seconds": calib_seconds, "rows": rows}
    write_results(args.out, payload, table)


def render(rows: list[dict], calib_seconds: float, n_calib: int, n_eval: int) -> str:
    lines = [
        "| configuration | cosine | 10-NN overlap | recovered | targeted MB | targeted params "
        "| mean rel. output error (base) | seconds | tag |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        recovered = "" if r["recovered"] is None else f"{r['recovered']:.3f}"
        lines.append(
            f"| {r['configuration']} | {r['cosine']:.4f} | {r['knn10_overlap']:.4f} | "
            f"{recovered} | {r['targeted_bytes_after'] / 1e6:.2f} "
            f"(of {r['targeted_bytes_before'] / 1e6:.2f}) | {r['targeted_params_after']:,} | "
            f"{r['mean_rel_output_error']:.4f} ({r['mean_base_rel_output_error']:.4f}) | "
            f"{r['compress_seconds']:.1f} | {r['tag']} |")
    lines.append("")
    lines.append(f"all-MiniLM-L6-v2, the 36 encoder linears; {n_calib} calibration passages, "
                 f"{n_eval} held-out passages of the embedded text; shared calibration "
                 f"statistics {calib_seconds:.1f} s. recovered = (cos - cos_base) / "
                 "(1 - cos_base). Pruned weights are stored densely (bytes not reduced).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
