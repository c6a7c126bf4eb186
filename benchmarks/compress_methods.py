"""Benchmark: every compression method x keep on the embedded default model and text.

Usage:  python benchmarks/compress_methods.py [--keeps 0.8 0.6 0.4] [--methods ...]
Writes benchmarks/results/compress_methods.json and .md and prints the markdown table.

Calibration statistics (Grams, |x| means and the Fisher diagonal) are collected once on the
calibration split and shared by all runs; quality is measured on the held-out split against
the original model's embeddings. Seconds are the compression time of each run (decomposition,
allocation, replacement), plus the shared calibration time reported once.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

from common import RESULTS, write_results  # benchmarks/common.py (run as scripts)

import lowrank as lr
from lowrank.calib import read_texts, tokenize
from lowrank.eval import Evaluator
from lowrank.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["svd", "asvd", "fwsvd", "svdllm"],
                        help="registry names; 'name+field' sets a boolean field and "
                             "'name+field=value' any field, e.g. svdllm+update_left, "
                             "svdllm+mode=sequential")
    parser.add_argument("--keeps", nargs="+", type=float, default=[0.8, 0.6, 0.4])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--out", default=str(RESULTS / "compress_methods"))
    args = parser.parse_args()

    loaded = load_model(None)
    calib = tokenize(read_texts(None, "calibration"), loaded.tokenizer, args.seq_len,
                     args.samples)
    held_out = tokenize(read_texts(None, "evaluation"), loaded.tokenizer, args.seq_len)
    other = tokenize(read_texts("licenses"), loaded.tokenizer, args.seq_len)
    evaluator = Evaluator(loaded.kind, held_out)
    reference = evaluator.reference(loaded.model)
    other_domain = Evaluator(loaded.kind, other)
    other_domain.reference(loaded.model)

    t0 = time.perf_counter()
    # Grams and |x| means are always collected; the Fisher only when FWSVD is benchmarked
    union = lr.FWSVD() if any(m.startswith("fwsvd") for m in args.methods) else lr.SVDLLM()
    stats = lr.calibrate(loaded.model, union, calib, tokenizer=loaded.tokenizer)
    calib_seconds = time.perf_counter() - t0

    rows = []
    for method in args.methods:
        for keep in args.keeps:
            model = copy.deepcopy(loaded.model)
            name, *flags = method.split("+")
            fields = dict(_field(flag) for flag in flags)
            config = lr.get_method(name)(keep=keep, **fields)
            t = time.perf_counter()
            result = lr.compress(model, config, data=calib if config.refines else None,
                                 tokenizer=loaded.tokenizer, stats=stats)
            seconds = time.perf_counter() - t
            quality = evaluator.measure(model)
            quality_other = other_domain.measure(model)
            rows.append({
                "method": method, "keep_target": keep, "keep_actual": result.keep_actual,
                "params_after": result.params_after, "bytes_after": result.bytes_after,
                "cosine": quality["cosine"], "knn10_overlap": quality["knn10_overlap"],
                "cosine_other_domain": quality_other["cosine"],
                "knn10_overlap_other_domain": quality_other["knn10_overlap"],
                "latency_ratio": quality["latency_s"] / reference["latency_s"],
                "compress_seconds": seconds, "tag": result.tag,
            })
            print(f"{method:7s} keep {keep}: cosine {quality['cosine']:.4f} "
                  f"knn {quality['knn10_overlap']:.4f} other-domain cosine "
                  f"{quality_other['cosine']:.4f} ({seconds:.1f} s)", flush=True)

    table = render(rows, calib_seconds, len(calib), len(held_out), len(other))
    payload = {"model": loaded.name, "calibration_passages": len(calib),
               "evaluation_passages": len(held_out), "other_domain_passages": len(other),
               "seq_len": args.seq_len,
               "calibration_seconds": calib_seconds, "rows": rows}
    write_results(args.out, payload, table)


def _field(flag: str) -> tuple[str, object]:
    key, sep, value = flag.partition("=")
    if not sep:
        return key, True
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def render(rows: list[dict], calib_seconds: float, n_calib: int, n_eval: int,
           n_other: int) -> str:
    lines = [
        "| method | keep target | keep actual | cosine (held-out docs) | 10-NN overlap | "
        "cosine (licences) | 10-NN overlap (licences) | latency ratio | seconds | tag |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['keep_target']} | {r['keep_actual']:.4f} | "
                     f"{r['cosine']:.4f} | {r['knn10_overlap']:.4f} | "
                     f"{r['cosine_other_domain']:.4f} | {r['knn10_overlap_other_domain']:.4f} | "
                     f"{r['latency_ratio']:.2f} | {r['compress_seconds']:.1f} | {r['tag']} |")
    lines.append("")
    lines.append(f"all-MiniLM-L6-v2; {n_calib} calibration passages and {n_eval} held-out "
                 f"passages of the embedded text, {n_other} passages of licence text (another "
                 f"domain); shared calibration statistics {calib_seconds:.1f} s.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
