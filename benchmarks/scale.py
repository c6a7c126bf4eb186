"""Compressing large decoder LLMs on one machine: whole-model against layer-wise (issue 15).

Usage:
  python benchmarks/scale.py sweep      # depth sweep, hidden 1024 / MLP 2816, 2-16 blocks
  python benchmarks/scale.py tinyllama  # TinyLlama-1.1B shape in bfloat16, end to end
  python benchmarks/scale.py methods    # per-block seconds of each method at width 1024
  python benchmarks/scale.py table      # results table + extrapolation to 8B / 70B shapes

Every model is a Llama built from ``LlamaConfig`` with random weights (seeded, normal with
std 0.02), saved with ``save_pretrained`` and a byte-level tokenizer; nothing is downloaded.
Each compression is one ``lowrank compress`` process; its peak resident memory is the
child's ``ru_maxrss``. Results go to ``benchmarks/results/scale.{json,md}`` (each part merges
into the JSON file, so the parts can run at different times).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "scale"
MODELS = Path(tempfile.gettempdir()) / "lowrank-scale-models"
WIDE = {"hidden": 1024, "mlp": 2816, "heads": 16, "kv": 16, "vocab": 4096}
TINYLLAMA = {"hidden": 2048, "mlp": 5632, "heads": 32, "kv": 4, "vocab": 32000, "blocks": 22}
LLAMA3_8B = {"hidden": 4096, "mlp": 14336, "heads": 32, "kv": 8, "vocab": 128256, "blocks": 32}
LLAMA3_70B = {"hidden": 8192, "mlp": 28672, "heads": 64, "kv": 8, "vocab": 128256,
              "blocks": 80}


def make_llama(directory: Path, hidden: int, mlp: int, heads: int, kv: int, vocab: int,
               blocks: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """A random Llama of this shape saved to ``directory`` (reused when present); weights
    are drawn one tensor at a time, so building it needs one copy of the weights only."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lowrank.models.byte_tokenizer import byte_level_tokenizer

    if (directory / "config.json").is_file():
        return directory
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp,
                         num_hidden_layers=blocks, num_attention_heads=heads,
                         num_key_value_heads=kv, max_position_embeddings=2048,
                         tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        model.model.rotary_emb.__init__(config)  # real (not meta-initialised) frequencies
    model.save_pretrained(str(directory), max_shard_size="2GB")
    byte_level_tokenizer().save_pretrained(str(directory))
    return directory


def run_compress(model: Path, *args: str) -> dict:
    """One ``lowrank compress`` process: its JSON summary, wall seconds and peak RSS (MB)."""
    out = Path(tempfile.mkdtemp(prefix="lowrank-scale-out-")) / "out"
    cmd = [sys.executable, "-m", "lowrank.cli", "compress", str(model), "--out", str(out),
           "--json", "--quiet", "--device", "cpu", *args]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    stdout, stderr = proc.stdout, proc.stderr
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-2000:]}")
    summary = json.loads(stdout)
    rss = _child_peak_mb()
    subprocess.run(["rm", "-rf", str(out.parent)], check=False)
    return {"summary": summary, "wall_s": wall, "peak_rss_mb": rss, "command": " ".join(cmd)}


def _child_peak_mb() -> float:
    """Peak RSS of the finished children (a maximum over all of them, so each measurement
    runs in a fresh interpreter with one child: see ``measure``)."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def measure(model: Path, *args: str) -> dict:
    """``run_compress`` in a fresh Python process, so the children's peak RSS is this run's."""
    here, target = str(Path(__file__).parent), str(model)
    code = (f"import json, sys; sys.path.insert(0, {here!r}); import scale; "
            f"print(json.dumps(scale.run_compress(scale.Path({target!r}), *{list(args)!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def weight_bytes(model: Path) -> int:
    from lowrank.io.shards import stored_tensors

    total = 0
    for path, shape in stored_tensors(model).values():
        del path
        total += math.prod(shape)
    config = json.loads((model / "config.json").read_text())
    bits = 16 if config.get("dtype", config.get("torch_dtype")) in ("bfloat16",
                                                                   "float16") else 32
    return total * bits // 8


def sweep(args) -> dict:
    rows = []
    for blocks in args.blocks:
        model = make_llama(MODELS / f"wide-{blocks}", **WIDE, blocks=blocks)
        for pipeline in ("whole", "layerwise"):
            r = measure(model, "--method", "svdllm", "--alloc", "uniform", "--keep", "0.6",
                        "--samples", "16", "--pipeline", pipeline)
            rows.append({"blocks": blocks, "pipeline": pipeline,
                         "params": r["summary"]["params_before"],
                         "weight_mb": weight_bytes(model) / 1e6,
                         "peak_rss_mb": r["peak_rss_mb"], "wall_s": r["wall_s"],
                         "compress_s": r["summary"]["timings"].get("total"),
                         "quality_after": r["summary"]["quality_after"]["perplexity"],
                         "command": r["command"]})
            print(rows[-1], flush=True)
    return {"sweep": rows}


def floor_seconds(hidden: int, mlp: int, heads: int, kv: int) -> dict:
    """One eigendecomposition per distinct input Gram and one SVD per matrix of a Llama block
    (float64, as the pipeline computes them): the decomposition floor of one block."""
    head_dim = hidden // heads
    matrices = [(hidden, hidden), (kv * head_dim, hidden), (kv * head_dim, hidden),
                (hidden, hidden), (mlp, hidden), (mlp, hidden), (hidden, mlp)]
    grams = [hidden, hidden, hidden, mlp]  # qkv share one input, o, gate/up share, down
    t = time.perf_counter()
    for n in grams:
        x = torch.randn(n, n, dtype=torch.float64)
        torch.linalg.eigh(x @ x.T)
    eig = time.perf_counter() - t
    t = time.perf_counter()
    for out_f, in_f in matrices:
        torch.linalg.svd(torch.randn(out_f, in_f, dtype=torch.float64), full_matrices=False)
    svd = time.perf_counter() - t
    return {"eigh_s": eig, "svd_s": svd}


def eval_file(count: int) -> Path:
    """``count`` passages of the embedded held-out text as a file (blank-line separated):
    evaluating a 1.1B model on the CPU costs minutes per hundred passages, and evaluation is
    not what this benchmark measures."""
    from lowrank.calib.data import read_texts

    path = MODELS / f"eval-{count}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(read_texts(None, "evaluation")[:count]) + "\n")
    return path


def tinyllama(args) -> dict:
    model = make_llama(MODELS / "tinyllama-bf16", **dict(TINYLLAMA), dtype=torch.bfloat16)
    r = measure(model, "--method", "svdllm", "--alloc", "uniform", "--keep", "0.6",
                "--samples", str(args.samples), "--pipeline", "layerwise", "--dtype", "auto",
                "--seq-len", "128", "--eval-data", str(eval_file(16)))
    floor = floor_seconds(TINYLLAMA["hidden"], TINYLLAMA["mlp"], TINYLLAMA["heads"],
                          TINYLLAMA["kv"])
    forward = _forward_seconds(model, args.samples)
    blocks = TINYLLAMA["blocks"]
    floor_total = forward + blocks * (floor["eigh_s"] + floor["svd_s"])
    row = {"model": "TinyLlama-1.1B shape (random, bfloat16)", "samples": args.samples,
           "evaluation_passages": 16,
           "weight_mb": weight_bytes(model) / 1e6, "peak_rss_mb": r["peak_rss_mb"],
           "wall_s": r["wall_s"], "compress_s": r["summary"]["timings"].get("total"),
           "floor_s": floor_total, "floor_forward_s": forward,
           "floor_block_eigh_s": floor["eigh_s"], "floor_block_svd_s": floor["svd_s"],
           "perplexity_before": r["summary"]["quality_before"]["perplexity"],
           "perplexity_after": r["summary"]["quality_after"]["perplexity"],
           "command": r["command"]}
    print(row, flush=True)
    return {"tinyllama": row}


def _forward_seconds(model: Path, samples: int) -> float:
    """One calibration forward of ``samples`` passages through the model, block by block."""
    from lowrank.calib.data import read_texts, tokenize
    from lowrank.models.loading import load_lazy

    loaded = load_lazy(str(model), dtype="auto")
    tokens = tokenize(read_texts(None, "calibration"), loaded.tokenizer, 128, samples)
    t = time.perf_counter()
    with loaded.lazy.streaming() as m, torch.no_grad():
        for batch in tokens.batches(16):
            m(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return time.perf_counter() - t


METHODS = {"svd": [], "asvd": [], "svdllm": [], "svdllm+sensitivity":
           ["--alloc", "sensitivity"], "fwsvd (whole)": ["--pipeline", "whole"],
           "eora": ["--set", "rank=32"], "cospadi": [], "modegpt": []}


def methods(args) -> dict:
    model = make_llama(MODELS / "wide-2", **WIDE, blocks=2)
    rows = []
    for label, extra in METHODS.items():
        name = label.split("+")[0].split(" ")[0]
        cli = ["--method", name, "--samples", "16", *extra]
        if "--pipeline" not in extra:
            cli += ["--pipeline", "layerwise"]
        if name not in ("eora",) and "--alloc" not in extra and name not in ("cospadi",
                                                                             "modegpt"):
            cli += ["--alloc", "uniform"]
        r = measure(model, *cli, "--keep", "0.6") if name != "eora" else measure(model, *cli)
        total = r["summary"]["timings"].get("total") or r["summary"]["timings"].get(
            "compression")
        rows.append({"method": label, "seconds_per_block": total / 2,
                     "peak_rss_mb": r["peak_rss_mb"], "command": r["command"]})
        print(rows[-1], flush=True)
    return {"methods": rows}


def render(data: dict) -> str:
    lines = []
    if "sweep" in data:
        lines += ["Depth sweep (hidden 1024, MLP 2816, vocab 4096, float32, 16 calibration "
                  "passages, `--method svdllm --alloc uniform --keep 0.6`):", "",
                  "| blocks | parameters | weights MB | pipeline | peak RSS MB | wall s |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in data["sweep"]:
            lines.append(f"| {r['blocks']} | {r['params'] / 1e6:.1f}M | {r['weight_mb']:.0f} | "
                         f"{r['pipeline']} | {r['peak_rss_mb']:,.0f} | {r['wall_s']:.0f} |")
    if "tinyllama" in data:
        r = data["tinyllama"]
        lines += ["", f"{r['model']}, {r['samples']} calibration passages, layer-wise:", "",
                  "| weights MB | peak RSS MB | RSS / weights | wall s | compression s "
                  "| floor s | compression / floor |",
                  "| --- | --- | --- | --- | --- | --- | --- |",
                  f"| {r['weight_mb']:,.0f} | {r['peak_rss_mb']:,.0f} | "
                  f"{r['peak_rss_mb'] / r['weight_mb']:.2f} | {r['wall_s']:.0f} | "
                  f"{r['compress_s']:.0f} | {r['floor_s']:.0f} | "
                  f"{r['compress_s'] / r['floor_s']:.2f} |"]
    if "methods" in data:
        lines += ["", "Per-block seconds of each method (hidden 1024, MLP 2816, 16 passages, "
                  "layer-wise unless marked):", "", "| method | s / block | peak RSS MB |",
                  "| --- | --- | --- |"]
        for r in data["methods"]:
            lines.append(f"| {r['method']} | {r['seconds_per_block']:.1f} | "
                         f"{r['peak_rss_mb']:,.0f} |")
    if "extrapolation" in data:
        lines += ["", "Extrapolated, not measured: layer-wise SVD-LLM at keep 0.6; CPU hours at "
                  "the decomposition flop rate the TinyLlama blocks achieved on these 2 cores, "
                  f"GPU minutes at an assumed {GPU_FLOPS / 1e12:.0f} TFLOP/s float64 "
                  "eigh/SVD rate (no GPU was measured), host memory = embedding and head + "
                  "one block's float64 working set + the compressed blocks:", "",
                  "| shape | blocks | bf16 weights GB | est. peak host GB | "
                  "est. CPU hours (2 cores) | est. GPU minutes |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in data["extrapolation"]:
            lines.append(f"| {r['shape']} | {r['blocks']} | {r['weights_gb']:.1f} | "
                         f"{r['peak_gb']:.1f} | {r['cpu_hours']:.1f} | {r['gpu_minutes']:.0f} |")
    return "\n".join(lines) + "\n"


#: Assumed sustained float64 rate of eigh/SVD on one H100-class GPU (cuSOLVER), for the
#: GPU column of the extrapolation; no GPU was measured.
GPU_FLOPS = 5e12


def _block_flops(shape: dict) -> float:
    """Decomposition flops of one Llama block: ``9 n^3`` per Gram eigendecomposition (four
    distinct inputs), ``4 m n^2 + 22 n^3`` per SVD of an m x n matrix (m >= n)."""
    h, m = shape["hidden"], shape["mlp"]
    kvd = h // shape["heads"] * shape["kv"]

    def svd(a: int, b: int) -> float:
        big, small = max(a, b), min(a, b)
        return 4 * big * small ** 2 + 22 * small ** 3

    eig = 9 * (3 * h ** 3 + m ** 3)
    return eig + 2 * svd(h, h) + 2 * svd(kvd, h) + 3 * svd(m, h)


def extrapolate(data: dict) -> list[dict]:
    """Scale the measured TinyLlama run to Llama-3 8B / 70B shapes (stated as estimates):
    CPU time by the decomposition flops at the rate the TinyLlama blocks achieved, GPU time at
    :data:`GPU_FLOPS`; host memory as the non-block modules + one block's float64 working set
    + the compressed blocks kept (keep 0.6)."""
    r = data["tinyllama"]
    per_block = (r["compress_s"] - r["floor_forward_s"]) / TINYLLAMA["blocks"]
    cpu_rate = _block_flops(TINYLLAMA) / per_block
    rows = []
    for label, shape in (("Llama-3-8B", LLAMA3_8B), ("Llama-3-70B", LLAMA3_70B)):
        h, m, b = shape["hidden"], shape["mlp"], shape["blocks"]
        kvd = h // shape["heads"] * shape["kv"]
        block_params = 2 * h * h + 2 * h * kvd + 3 * h * m
        weights = (b * block_params + 2 * shape["vocab"] * h) * 2
        working = 8 * (block_params * 3 + 3 * h * h + m * m)  # weights, factors, Grams
        peak = 2 * shape["vocab"] * h * 2 + working + 0.6 * b * block_params * 2
        flops = b * _block_flops(shape)
        rows.append({"shape": label, "blocks": b, "weights_gb": weights / 1e9,
                     "peak_gb": peak / 1e9, "cpu_hours": flops / cpu_rate / 3600,
                     "gpu_minutes": flops / GPU_FLOPS / 60})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["sweep", "tinyllama", "methods", "table"])
    parser.add_argument("--blocks", nargs="+", type=int, default=[2, 4, 8, 16])
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args()
    path = OUT.with_suffix(".json")
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.pop("environment", None)
    if args.part == "sweep":
        data.update(sweep(args))
    elif args.part == "tinyllama":
        data.update(tinyllama(args))
    elif args.part == "methods":
        data.update(methods(args))
    if "tinyllama" in data:
        data["extrapolation"] = extrapolate(data)
    write_results(OUT, data, render(data))


if __name__ == "__main__":
    main()
