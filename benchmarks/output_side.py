"""Benchmark: output-side methods (LoRD, AFM) against SVD-LLM on the embedded MiniLM, and AFM on
the word-embedding table.

Usage:  python benchmarks/output_side.py [--keeps 0.8 0.6] [--table-keeps 0.9 0.75 0.5]
Writes benchmarks/results/output_side.json and .md and prints the markdown table.

Rows:

* ``encoder``: svdllm / lord / afm at each ``--keeps`` over the 36 encoder linears;
* ``table``: AFM on the word-embedding table alone (``AFM(keep=1, embeddings=True,
  embedding_keep=T)``: every linear stays dense), plus the ``embedding_floor`` ablation (0 and
  1) at the smallest table keep;
* ``table+encoder``: the table at keep T and SVD-LLM on the encoder at the keep that removes,
  in total, as many parameters as SVD-LLM alone at each ``--keeps`` (same whole-model size),
  where that is possible.

Quality is the mean cosine between the original and compressed sentence embeddings on the
held-out split; "loss per M removed" is ``(1 - cosine)`` divided by the parameters removed
from the whole model in millions, the price of a parameter in each place. Calibration
statistics (Grams, input sums, token counts) are collected once and shared.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keeps", nargs="+", type=float, default=[0.8, 0.6])
    parser.add_argument("--table-keeps", nargs="+", type=float, default=[0.9, 0.75, 0.5])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--out", default=str(RESULTS / "output_side"))
    args = parser.parse_args()

    loaded = load_model(None)
    original = loaded.model
    calib = tokenize(read_texts(None, "calibration"), loaded.tokenizer, args.seq_len,
                     args.samples)
    held_out = tokenize(read_texts(None, "evaluation"), loaded.tokenizer, args.seq_len)
    evaluator = Evaluator(loaded.kind, held_out)
    evaluator.reference(original)
    params_original = sum(p.numel() for p in original.parameters())

    t0 = time.perf_counter()
    stats = lr.calibrate(original, lr.SVDLLM(), calib, tokenizer=loaded.tokenizer)
    calib_seconds = time.perf_counter() - t0

    rows: list[dict] = []

    def run(label: str, scope: str, steps: list[lr.CompressionConfig], **extra) -> dict:
        model = copy.deepcopy(original)
        t = time.perf_counter()
        results = [lr.compress(model, config, stats=stats) for config in steps]
        seconds = time.perf_counter() - t
        quality = evaluator.measure(model)
        params = sum(p.numel() for p in model.parameters())
        removed = params_original - params
        row = {
            "label": label, "scope": scope, "configs": [c.to_dict() for c in steps],
            "keep_actual": [r.keep_actual for r in results],
            "targeted_params_before": [r.targeted_params_before for r in results],
            "params_after": params, "params_removed": removed,
            "whole_model_keep": params / params_original,
            "cosine": quality["cosine"], "knn10_overlap": quality["knn10_overlap"],
            "cosine_loss_per_M_removed": (1 - quality["cosine"]) / (removed / 1e6)
            if removed > 0 else None,
            "compress_seconds": seconds, "tag": results[-1].tag, **extra,
        }
        if scope != "encoder":
            table = next(m for m in results[0].modules if m.notes.get("kind") == "embedding")
            row["table_rank"] = table.rank
            row["table_keep_actual"] = table.params_after / table.params_before
            row["table_rel_output_error"] = table.rel_output_error
        rows.append(row)
        print(f"{label:38s} params {params / 1e6:6.2f}M cosine {quality['cosine']:.4f} "
              f"({seconds:.1f} s)", flush=True)
        return row

    encoder: dict[float, dict] = {}
    for keep in args.keeps:
        for method in ("svdllm", "lord", "afm"):
            row = run(f"{method} encoder keep {keep}", "encoder",
                      [lr.METHODS.get(method)(keep=keep)], method=method, encoder_keep=keep)
            if method == "svdllm":
                encoder[keep] = row
    tables: dict[float, dict] = {}
    for tkeep in args.table_keeps:
        tables[tkeep] = run(f"afm table keep {tkeep}", "table",
                            [lr.AFM(keep=1.0, embeddings=True, embedding_keep=tkeep)],
                            method="afm", table_keep=tkeep, embedding_floor=0.1)
    smallest = min(args.table_keeps)
    for floor in (0.0, 1.0):
        run(f"afm table keep {smallest} floor {floor:g}", "table",
            [lr.AFM(keep=1.0, embeddings=True, embedding_keep=smallest,
                    embedding_floor=floor)],
            method="afm", table_keep=smallest, embedding_floor=floor)
    linears = encoder[args.keeps[0]]["targeted_params_before"][0]
    for keep, reference in encoder.items():
        for tkeep, table in tables.items():
            rest = reference["params_removed"] - table["params_removed"]
            ekeep = round(1 - rest / linears, 4)
            if not 0 < ekeep < 1:
                continue  # the table alone removes more (or the encoder would grow)
            run(f"afm table {tkeep} + svdllm encoder {ekeep}", "table+encoder",
                [lr.AFM(keep=1.0, embeddings=True, embedding_keep=tkeep),
                 lr.SVDLLM(keep=ekeep)],
                method="afm+svdllm", table_keep=tkeep, encoder_keep=ekeep,
                matches=f"svdllm encoder keep {keep}")

    table = render(rows, params_original, calib_seconds, len(calib), len(held_out))
    payload = {"model": loaded.name, "params_original": params_original,
               "calibration_passages": len(calib), "evaluation_passages": len(held_out),
               "seq_len": args.seq_len, "calibration_seconds": calib_seconds, "rows": rows}
    write_results(args.out, payload, table)


def render(rows: list[dict], params_original: int, calib_seconds: float, n_calib: int,
           n_eval: int) -> str:
    lines = [
        "| configuration | scope | keep actual | whole-model params | cosine | "
        "10-NN overlap | cosine loss per M removed | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r["scope"] == "encoder":
            keep = f"{r['keep_actual'][0]:.4f}"
        else:
            keep = f"table {r['table_keep_actual']:.4f}"
            if r["scope"] == "table+encoder":
                keep += f", encoder {r['keep_actual'][1]:.4f}"
        per = r["cosine_loss_per_M_removed"]
        lines.append(f"| {r['label']} | {r['scope']} | {keep} | "
                     f"{r['params_after'] / 1e6:.2f}M ({r['whole_model_keep']:.3f}) | "
                     f"{r['cosine']:.4f} | {r['knn10_overlap']:.4f} | "
                     f"{'n/a' if per is None else f'{per:.4f}'} | "
                     f"{r['compress_seconds']:.1f} |")
    lines.append("")
    lines.append(f"all-MiniLM-L6-v2 ({params_original / 1e6:.2f}M parameters); {n_calib} "
                 f"calibration passages, {n_eval} held-out passages of the embedded text; "
                 f"shared calibration statistics {calib_seconds:.1f} s. \"keep actual\": of "
                 "the encoder linears and/or of the word-embedding table. Training-free.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
