"""The block-local sensitivity estimate against the exact end-to-end probes (issue 15, item 3).

Usage:  python benchmarks/sensitivity_estimate.py [--models minilm llama] [--samples 1 2 4]

For every targeted matrix of MiniLM (and the byte-level Llama of ``compress_methods.py``,
trained on first use) and the SVD-LLM decomposition at its probe rank, the sensitivity is
measured twice on the same probe passages: exactly (``OutputProbe``: one whole-model forward
per matrix) and estimated (``BlockProbe``: one block forward per matrix, gradient energies from
``samples`` backward passes). Reported: Spearman rank correlation, the ratio of the two, and
the seconds of each. Then the default configuration (SVD-LLM, sensitivity allocation) with
``probe='exact'`` and ``probe='estimate'`` at keep 0.8 and 0.6: held-out quality of both.
Writes ``benchmarks/results/sensitivity_estimate.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_results  # noqa: E402

import lowrank as lr  # noqa: E402
from lowrank.alloc.sensitivity import probe_rank  # noqa: E402
from lowrank.blocks import ResidentBlocks  # noqa: E402
from lowrank.calib.data import read_texts, tokenize  # noqa: E402
from lowrank.compress.estimate import BlockProbe  # noqa: E402
from lowrank.compress.factorize import _low_rank, decompose_all  # noqa: E402
from lowrank.compress.probe import OutputProbe  # noqa: E402
from lowrank.defaults import default_config, fit_default  # noqa: E402
from lowrank.eval import Evaluator  # noqa: E402
from lowrank.models import load_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def spearman(a: list[float], b: list[float]) -> float:
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def _setup(name: str, samples: int):
    if name == "minilm":
        loaded, seq_len = load_model(None), 128
    else:
        from compress_methods import LLAMA_DIR, _train_llama

        if not (LLAMA_DIR / "config.json").is_file():
            _train_llama()
        loaded, seq_len = load_model(str(LLAMA_DIR)), 256
    calib = tokenize(read_texts(None, "calibration"), loaded.tokenizer, seq_len, samples)
    held = tokenize(read_texts(None, "evaluation"), loaded.tokenizer, seq_len)
    return loaded, calib, held


def correlation_rows(name: str, loaded, calib, sample_counts: list[int]) -> list[dict]:
    model = loaded.model
    config = lr.SVDLLM(keep=0.6, alloc="sensitivity")
    stats = lr.calibrate(model, config, calib, tokenizer=loaded.tokenizer)
    modules = lr.surgery.LINEAR.select(model)
    decomps, items = decompose_all(config, modules, stats)
    trials = {it.name: _low_rank(modules[it.name], decomps[it.name], probe_rank(it))
              for it in items}
    t = time.perf_counter()
    exact_probe = OutputProbe(model, calib)
    exact = [exact_probe(n, trial) for n, trial in trials.items()]
    exact_seconds = time.perf_counter() - t
    rows = []
    for samples in sample_counts:
        t = time.perf_counter()
        probe = BlockProbe(ResidentBlocks(model), calib, samples=samples)
        estimate = [probe(n, trial) for n, trial in trials.items()]
        seconds = time.perf_counter() - t
        ratios = torch.tensor(estimate) / torch.tensor(exact).clamp_min(1e-30)
        rows.append({"model": name, "samples": samples, "matrices": len(items),
                     "spearman": spearman(exact, estimate),
                     "ratio_median": float(ratios.median()),
                     "ratio_min": float(ratios.min()), "ratio_max": float(ratios.max()),
                     "exact_seconds": exact_seconds, "estimate_seconds": seconds})
        print(rows[-1], flush=True)
    return rows


def quality_rows(name: str, loaded, calib, held, keeps: list[float]) -> list[dict]:
    evaluator = Evaluator(loaded.kind, held)
    before = evaluator.reference(loaded.model)
    rows = []
    for keep in keeps:
        for probe in ("exact", "estimate"):
            model = copy.deepcopy(loaded.model)
            config = fit_default(default_config(False, keep=keep, probe=probe), model)
            t = time.perf_counter()
            lr.compress(model, config, calib, tokenizer=loaded.tokenizer)
            seconds = time.perf_counter() - t
            after = evaluator.measure(model, latency=False)
            metric = "cosine" if loaded.kind == "encoder" else "perplexity"
            rows.append({"model": name, "keep": keep, "probe": probe, "metric": metric,
                         "quality": after[metric], "quality_before": before.get(metric),
                         "compress_seconds": seconds})
            print(rows[-1], flush=True)
    return rows


def render(corr: list[dict], quality: list[dict]) -> str:
    lines = ["| model | samples | matrices | Spearman | estimate / exact (median, min-max) "
             "| exact s | estimate s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in corr:
        lines.append(f"| {r['model']} | {r['samples']} | {r['matrices']} | {r['spearman']:.3f} "
                     f"| {r['ratio_median']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) "
                     f"| {r['exact_seconds']:.1f} | {r['estimate_seconds']:.1f} |")
    lines += ["", "| model | keep | probe | held-out quality | compress s |",
              "| --- | --- | --- | --- | --- |"]
    for r in quality:
        lines.append(f"| {r['model']} | {r['keep']} | {r['probe']} | {r['metric']} "
                     f"{r['quality']:.4f} | {r['compress_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "llama"])
    parser.add_argument("--samples", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--keeps", nargs="+", type=float, default=[0.8, 0.6])
    parser.add_argument("--passages", type=int, default=256)
    parser.add_argument("--out", default=str(RESULTS / "sensitivity_estimate"))
    args = parser.parse_args()
    torch.manual_seed(0)
    corr, quality = [], []
    for name in args.models:
        loaded, calib, held = _setup(name, args.passages)
        corr += correlation_rows(name, loaded, calib, args.samples)
        if not args.skip_quality:
            quality += quality_rows(name, loaded, calib, held, args.keeps)
    write_results(args.out, {"correlation": corr, "quality": quality}, render(corr, quality))


if __name__ == "__main__":
    main()
