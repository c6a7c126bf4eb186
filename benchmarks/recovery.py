"""Benchmark: recovery fine-tuning of SVD-LLM-compressed MiniLM through its low-rank factors.

Usage:  python benchmarks/recovery.py [--keep 0.8] [--objectives distill task] [--steps 80]
Writes benchmarks/results/recovery.json and .md and prints the markdown table.

Data, three disjoint parts of the embedded text:
  * compression calibration: the first 256 calibration passages at 128 tokens (the
    ``lowrank.compress`` defaults);
  * fine-tuning: every calibration passage except the last ``--stop-passages``, which are held
    out for early stopping (the factors with the best held-out embedding gap are kept);
  * reporting: the evaluation split (``read_texts(None, "evaluation")``), never seen by
    compression, training or early stopping, through :class:`lowrank.eval.Evaluator`.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from common import RESULTS, write_results  # benchmarks/common.py (run as scripts)

import lowrank as lr
from lowrank.calib import read_texts, tokenize
from lowrank.defaults import DEFAULT_METHOD, DEFAULT_OPTIONS, describe_config, make_config
from lowrank.eval import Evaluator
from lowrank.finetune import RecoveryConfig, embedding_gap, recover
from lowrank.models import load_model

TARGET_GAP = 0.03


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=float, default=0.8)
    parser.add_argument("--config", choices=["svdllm", "default"], default="svdllm",
                        help="uniform SVD-LLM, or the default configuration of `lowrank "
                             "compress` (sensitivity allocation, embedding table in the budget)")
    parser.add_argument("--objectives", nargs="+", default=["distill", "task"],
                        choices=["distill", "task"])
    parser.add_argument("--steps", type=int, default=80, help="optimisation steps per run")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate of 'distill'")
    parser.add_argument("--task-lr", type=float, default=1e-5,
                        help="learning rate of 'task' (the contrastive loss moves the model "
                             "away from the original quickly)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--inf-norm-weight", type=float, default=None,
                        help="PELA regulariser weight (default: the objective's default)")
    parser.add_argument("--eval-every", type=int, default=10,
                        help="steps between early-stopping evaluations")
    parser.add_argument("--samples", type=int, default=256, help="compression calibration")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--stop-passages", type=int, default=64,
                        help="calibration passages held out for early stopping")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "recovery"))
    args = parser.parse_args()

    loaded = load_model(None)
    texts = read_texts(None, "calibration")
    if args.stop_passages + args.samples > len(texts):
        parser.error(f"{args.samples} + {args.stop_passages} passages exceed the "
                     f"{len(texts)} calibration passages")
    calib = tokenize(texts, loaded.tokenizer, args.seq_len, args.samples)
    train = tokenize(texts[: -args.stop_passages], loaded.tokenizer, args.seq_len)
    stop = tokenize(texts[-args.stop_passages :], loaded.tokenizer, args.seq_len)
    held_out = tokenize(read_texts(None, "evaluation"), loaded.tokenizer, args.seq_len)
    evaluator = Evaluator(loaded.kind, held_out)
    evaluator.reference(loaded.model)
    original = loaded.model

    compressed = copy.deepcopy(original)
    t = time.perf_counter()
    options = DEFAULT_OPTIONS if args.config == "default" else {}
    config = make_config(DEFAULT_METHOD, keep=args.keep, **options)
    result = lr.compress(compressed, config, data=calib, tokenizer=loaded.tokenizer)
    compress_seconds = time.perf_counter() - t
    before = evaluator.measure(compressed)
    gap = embedding_gap(original, stop)
    stop_before = gap(compressed)
    print(f"{describe_config(config)} keep {args.keep}: cosine {before['cosine']:.4f} "
          f"(1 - cosine {1 - before['cosine']:.4f}), compression {compress_seconds:.1f} s",
          flush=True)

    rows = []
    for objective in args.objectives:
        model = copy.deepcopy(compressed)
        torch.manual_seed(args.seed)
        rate = args.lr if objective == "distill" else args.task_lr
        settings = RecoveryConfig(objective=objective, steps=args.steps, lr=rate,
                                  batch_size=args.batch_size,
                                  inf_norm_weight=args.inf_norm_weight,
                                  eval_every=args.eval_every, seed=args.seed)
        report = recover(model, original, train, settings, eval_fn=gap,
                         tokenizer=loaded.tokenizer, quiet=False)
        after = evaluator.measure(model)
        rows.append({
            "objective": objective, "lr": rate, "keep_actual": result.keep_actual,
            "cosine_before": before["cosine"], "cosine_after": after["cosine"],
            "gap_before": 1 - before["cosine"], "gap_after": 1 - after["cosine"],
            "knn10_before": before["knn10_overlap"], "knn10_after": after["knn10_overlap"],
            "stop_gap_before": stop_before, "stop_gap_after": report.best_eval,
            "steps_run": report.steps, "best_step": report.best_step,
            "seconds": report.seconds, "seconds_per_step": report.seconds / report.steps,
            "target_met": 1 - after["cosine"] < TARGET_GAP,
            "tag": report.tag, "report": report.to_dict(),
        })
        print(f"{objective}: cosine {before['cosine']:.4f} -> {after['cosine']:.4f} "
              f"(1 - cosine {1 - after['cosine']:.4f}) in {report.seconds:.0f} s, "
              f"best step {report.best_step}/{report.steps}", flush=True)

    args.configuration = describe_config(config)
    table = render(rows, args, compress_seconds, len(train), len(stop), len(held_out))
    payload = {"model": loaded.name, "method": result.method, "keep_target": args.keep,
               "keep_actual": result.keep_actual, "compress_seconds": compress_seconds,
               "calibration_passages": len(calib), "training_passages": len(train),
               "early_stopping_passages": len(stop), "evaluation_passages": len(held_out),
               "seq_len": args.seq_len, "target_gap": TARGET_GAP, "rows": rows,
               "threads": torch.get_num_threads()}
    write_results(args.out, payload, table)


def render(rows: list[dict], args, compress_seconds: float, n_train: int, n_stop: int,
           n_eval: int) -> str:
    lines = [
        "| objective | lr | keep | cosine before | cosine after | 1 - cosine before | "
        "1 - cosine after | 10-NN before | 10-NN after | steps (best) | seconds | "
        "target < 0.03 | tag |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['objective']} | {r['lr']:g} | {r['keep_actual']:.4f} | "
            f"{r['cosine_before']:.4f} | {r['cosine_after']:.4f} | {r['gap_before']:.4f} | "
            f"{r['gap_after']:.4f} | {r['knn10_before']:.4f} | {r['knn10_after']:.4f} | "
            f"{r['steps_run']} ({r['best_step']}) | {r['seconds']:.0f} | "
            f"{'met' if r['target_met'] else 'not met'} | {r['tag']} |")
    lines.append("")
    lines.append(
        f"all-MiniLM-L6-v2 compressed by {args.configuration} (keep {args.keep}, "
        f"{args.samples} calibration "
        f"passages x {args.seq_len} tokens, {compress_seconds:.0f} s), then fine-tuned through "
        f"the low-rank factors only: {args.steps} AdamW steps of {args.batch_size} passages "
        f"(warm-up, cosine decay) on {n_train} calibration passages; early stopping "
        f"(best of evaluations every {args.eval_every} steps, step 0 included) on {n_stop} "
        f"other calibration passages; cosine on the {n_eval} passages of the "
        f"evaluation split. {torch.get_num_threads()} CPU thread(s), shared machine.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
