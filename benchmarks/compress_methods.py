"""Benchmark: every compression method x keep on the embedded MiniLM and on a small causal LM.

Usage:  python benchmarks/compress_methods.py [--models minilm llama] [--keeps 0.8 0.6 0.4]
                                              [--methods ...]
Writes benchmarks/results/compress_methods.json and .md and prints the markdown table.

Models: the embedded all-MiniLM-L6-v2 (quality: cosine and 10-NN overlap of sentence
embeddings against the original), and a byte-level Llama (the pretraining benchmark's AdamW
recipe, trained for 800 steps of 8 x 256 bytes and cached in
``benchmarks/results/compress_llama``; quality: perplexity). Each is measured on held-out
passages of its calibration source (the embedded documentation text) and on licence texts of
the installed packages (another domain).

Calibration statistics are collected once per model and shared by all runs; methods with a
refit stage or the sensitivity allocator also get the calibration passages. ``default`` is
what ``lowrank compress`` runs without ``--method`` (``lowrank.defaults.default_config``:
``DEFAULT_METHOD`` with ``DEFAULT_OPTIONS``). Methods: registry names, ``name+field``
(boolean) or ``name+field=value`` (JSON value), e.g. ``svdllm+alloc=sensitivity``,
``svdllm+mode=sequential``. LR²VQ keeps every parameter and spends a byte budget instead: at
each keep of the sweep it gets ``bytes_fraction=keep`` (the bytes uniform SVD-LLM stores at
that keep). A method given its own budget (``lr2vq+bits=2``: bits per weight) runs without the
sweep's keep and reports keep "-". Parameters and bytes are whole-model counts after compression.
``--combine a.json b.json ...`` renders the rows of earlier runs into one table at ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

from common import RESULTS, write_results  # benchmarks/common.py (run as scripts)

import lowrank as lr
from lowrank.calib import read_texts, tokenize
from lowrank.defaults import default_config, describe_config, fit_default, make_config
from lowrank.eval import Evaluator
from lowrank.models import load_model

LLAMA_DIR = RESULTS / "compress_llama"
#: The pretraining benchmark's AdamW recipe, trained longer (its 100-step model is so close to
#: its random initialisation that truncation barely moves its perplexity).
LLAMA_STEPS, LLAMA_BATCH = 800, 8
METHODS = ["svd", "asvd", "fwsvd", "svdllm", "svdllm+mode=sequential",
           "svdllm+alloc=sensitivity", "default"]
#: Methods whose budget is bytes, not parameters: the sweep's keep becomes their
#: ``bytes_fraction``.
BYTE_BUDGET = {"lr2vq"}
#: Fields that give a method its own budget: such a run ignores the sweep's keep.
OWN_BUDGET = {"bits", "bytes_fraction"}


@dataclass
class Setup:
    name: str
    loaded: object
    calib: object
    held_out: Evaluator
    other: Evaluator
    reference: dict
    reference_other: dict
    params: int
    bytes: int


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "llama"],
                        choices=["minilm", "llama"])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--keeps", nargs="+", type=float, default=[0.8, 0.6, 0.4])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--out", default=str(RESULTS / "compress_methods"))
    parser.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                        help="render the rows of these result files into one table at --out "
                             "(nothing is run)")
    parser.add_argument("--note", action="append", default=[],
                        help="a sentence added to the table's notes (repeatable)")
    args = parser.parse_args()
    if args.combine:
        rows, notes = [], []
        for path in args.combine:
            data = json.loads(Path(path).read_text())
            rows += data["rows"]
            notes += [n for n in data["notes"] if n not in notes]
        notes += args.note
        write_results(args.out, {"rows": rows, "notes": notes, "combined": args.combine},
                      render(rows, notes))
        return

    rows, notes = [], []
    for model_name in args.models:
        setup = _setup(model_name, args.samples)
        t0 = time.perf_counter()
        fisher = any(m.startswith("fwsvd") for m in args.methods)
        stats = lr.calibrate(setup.loaded.model, lr.FWSVD() if fisher else lr.SVDLLM(),
                             setup.calib, tokenizer=setup.loaded.tokenizer)
        calib_seconds = time.perf_counter() - t0
        notes.append(f"{model_name}: {setup.params / 1e6:.2f}M parameters, "
                     f"{len(setup.calib)} calibration passages, shared statistics "
                     f"{calib_seconds:.1f} s")
        for method in args.methods:
            for keep in args.keeps:
                rows.append(_run(setup, method, keep, stats))
                r = rows[-1]
                print(f"{model_name} {method} keep {keep}: {r['metric']} {r['quality']:.4f} "
                      f"/ other domain {r['quality_other']:.4f}, {r['params_after']:,} "
                      f"params ({r['compress_seconds']:.1f} s)", flush=True)
    table = render(rows, notes)
    write_results(args.out, {"rows": rows, "notes": notes}, table)


def _setup(name: str, samples: int) -> Setup:
    if name == "minilm":
        loaded, seq_len = load_model(None), 128
    else:
        if not (LLAMA_DIR / "config.json").is_file():
            _train_llama()
        loaded, seq_len = load_model(str(LLAMA_DIR)), 256
    tok = loaded.tokenizer
    calib = tokenize(read_texts(None, "calibration"), tok, seq_len, samples)
    held_out = Evaluator(loaded.kind, tokenize(read_texts(None, "evaluation"), tok, seq_len))
    other = Evaluator(loaded.kind, tokenize(read_texts("licenses"), tok, seq_len, 400))
    reference = held_out.reference(loaded.model)
    reference_other = other.reference(loaded.model)
    return Setup(name, loaded, calib, held_out, other, reference, reference_other,
                 lr.nn.count_parameters(loaded.model), lr.nn.count_bytes(loaded.model))


def _train_llama() -> None:
    """The pretraining benchmark's AdamW model, trained for LLAMA_STEPS steps, saved with its
    byte-level tokenizer."""
    from lowrank.models.byte_tokenizer import byte_level_tokenizer
    from lowrank.optim.pretrain import PretrainConfig, pretrain

    print("training the byte-level Llama (pretraining benchmark recipe) ...", flush=True)
    result = pretrain(PretrainConfig(method="adamw", lr=3e-3, steps=LLAMA_STEPS,
                                     batch_size=LLAMA_BATCH), quiet=False)
    result.model.save_pretrained(str(LLAMA_DIR))
    byte_level_tokenizer().save_pretrained(str(LLAMA_DIR))


def _config(method: str, keep: float, model) -> lr.CompressionConfig:
    if method == "default":
        return fit_default(default_config(vision=False, keep=keep), model)
    name, fields = _spec(method)
    if OWN_BUDGET & set(fields):  # a method with its own budget (lr2vq+bits=2): no keep
        return make_config(name, **fields)
    if name in BYTE_BUDGET:
        return make_config(name, bytes_fraction=keep, **fields)
    return make_config(name, keep=keep, **fields)


def _spec(method: str) -> tuple[str, dict]:
    """``name+field=value+flag`` -> the registry name and the fields."""
    name, *flags = method.split("+")
    return name, dict(_field(flag) for flag in flags)


def _run(setup: Setup, method: str, keep: float, stats) -> dict:
    model = copy.deepcopy(setup.loaded.model)
    config = _config(method, keep, model)
    t = time.perf_counter()
    result = lr.compress(model, config,
                         data=setup.calib if "text" in config.needs else None,
                         tokenizer=setup.loaded.tokenizer, stats=stats)
    seconds = time.perf_counter() - t
    quality = setup.held_out.measure(model)
    other = setup.other.measure(model, latency=False)
    metric = "cosine" if setup.loaded.kind == "encoder" else "perplexity"
    row = {
        "model": setup.name, "method": method, "configuration": describe_config(config),
        "keep_target": None if OWN_BUDGET & set(_spec(method)[1]) else keep,
        "keep_actual": result.keep_actual,
        "params_before": setup.params, "params_after": result.params_after,
        "bytes_before": setup.bytes, "bytes_after": result.bytes_after,
        "metric": metric, "quality": quality[metric], "quality_other": other[metric],
        "reference": setup.reference[metric], "reference_other": setup.reference_other[metric],
        "latency_ratio": quality["latency_s"] / setup.reference["latency_s"],
        "compress_seconds": seconds, "tag": result.tag,
    }
    if metric == "cosine":
        row["knn10_overlap"] = quality["knn10_overlap"]
        row["knn10_overlap_other"] = other["knn10_overlap"]
    return row


def _field(flag: str) -> tuple[str, object]:
    key, sep, value = flag.partition("=")
    if not sep:
        return key, True
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _loss(row: dict, other: bool) -> float:
    """1 - cosine (encoders) or the perplexity increase over the dense model (causal LMs)."""
    q = row["quality_other" if other else "quality"]
    if row["metric"] == "cosine":
        return 1.0 - q
    return q - row["reference_other" if other else "reference"]


def render(rows: list[dict], notes: list[str]) -> str:
    lines = [
        "| model | method | keep target | keep actual | params | bytes | quality (held-out) "
        "| quality (licences) | loss vs uniform SVD-LLM (held-out / licences) | latency ratio "
        "| seconds | tag |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = {(r["model"], r["keep_target"]): r for r in rows if r["method"] == "svdllm"}
    for r in rows:
        ref = base.get((r["model"], r["keep_target"]))
        ratio = "" if ref is None else (
            f"{_loss(r, False) / max(_loss(ref, False), 1e-12):.2f}x / "
            f"{_loss(r, True) / max(_loss(ref, True), 1e-12):.2f}x")
        unit = "cos" if r["metric"] == "cosine" else "ppl"
        keep = "-" if r["keep_target"] is None else r["keep_target"]
        lines.append(
            f"| {r['model']} | {r['method']} | {keep} | {r['keep_actual']:.4f} | "
            f"{r['params_after'] / 1e6:.2f}M ({r['params_after'] / r['params_before']:.3f}) | "
            f"{r['bytes_after'] / 2**20:.1f} MiB | {unit} {r['quality']:.4f} | "
            f"{unit} {r['quality_other']:.4f} | {ratio} | {r['latency_ratio']:.2f} | "
            f"{r['compress_seconds']:.1f} | {r['tag']} |")
    lines.append("")
    causal = [r for r in rows if r["metric"] == "perplexity"]
    dense = (f"; dense: held-out {causal[0]['reference']:.3f}, "
             f"licences {causal[0]['reference_other']:.3f}") if causal else ""
    lines.append("Quality: cosine of sentence embeddings against the original (MiniLM) or "
                 f"perplexity (Llama{dense}). Loss: 1 - cosine, or the perplexity increase "
                 "over the dense model, relative to uniform SVD-LLM at the same keep. keep: of the "
                 "configuration's targeted parameters (the default configuration also "
                 "targets the input-embedding table); params are whole-model. "
                 + "; ".join(n.rstrip(".") for n in notes) + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    Path(RESULTS).mkdir(exist_ok=True)
    main()
