"""`lowrank compress` on a Hugging Face CNN, end to end through the command line.

Trains a small ``ResNetForImageClassification`` on the calibration part of scikit-learn's
bundled digits (no downloads), saves it with ``save_pretrained``, then runs
``lowrank compress <dir> --method conv`` in a subprocess at several keeps, decompositions and
allocations (and once with no options: the default configuration for vision models), and
measures each output directory reloaded with ``lowrank.load``: parameters, the cosine of the
pooled outputs that the CLI reports, and the digit accuracy of the trained classification head
on the held-out digits before and after (training-free, no fine-tuning).

CP-ALS (500 iterations, 3 restarts per kernel) dominates the time; the data-aware
``--alloc output-error`` factorizes every layer at ten candidate keeps, so CP with it runs only
with ``--cp-output-error`` (about ten times the CP time).

    python benchmarks/cnn_cli.py [--steps 300] [--keeps 0.5,0.3] [--retrain]
                                 [--cp-output-error] [--out benchmarks/results/cnn_cli]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, write_results  # noqa: E402

import lowrank as lr  # noqa: E402
from lowrank.data.images import digit_labels, digits, image_size, prepare_images  # noqa: E402

MODEL_DIR = RESULTS / "cnn_resnet"
IMAGE_SIZE = 32


def digit_tensors(split, config):
    pixels = prepare_images(digits(split), image_size(config), config.num_channels).pixel_values
    return pixels, torch.tensor(digit_labels(split))


def train_resnet(steps, seed=0):
    """A small ResNet (basic blocks, 16-32-64 channels) trained with AdamW on the digits."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1],
                          layer_type="basic", num_labels=10, image_size=IMAGE_SIZE)
    model = ResNetForImageClassification(config)
    x, y = digit_tensors("calibration", config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = model(pixel_values=x[idx], labels=y[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            print(f"step {step}: loss {loss.item():.4f}", file=sys.stderr)
    model.eval()
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(MODEL_DIR)
    (MODEL_DIR / "train.json").write_text(json.dumps(
        {"steps": steps, "seconds": time.perf_counter() - t0, "seed": seed}))
    return model


def head_accuracy(base_or_compressed, head, x, y):
    with torch.no_grad():
        feats = torch.cat([base_or_compressed(pixel_values=x[i:i + 128]).pooler_output
                           for i in range(0, len(x), 128)])
        return float((head(feats).argmax(-1) == y).float().mean())


def run_cli(args, out):
    cmd = [sys.executable, "-m", "lowrank.cli", "compress", str(MODEL_DIR), *args, "--out",
           str(out), "--json", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout), time.perf_counter() - t0, " ".join(cmd[2:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps (batch 64)")
    parser.add_argument("--keeps", default="0.5,0.3", help="comma-separated keeps")
    parser.add_argument("--retrain", action="store_true", help="retrain the cached model")
    parser.add_argument("--cp-output-error", action="store_true",
                        help="also run CP with the data-aware allocation (slow)")
    parser.add_argument("--out", default=str(RESULTS / "cnn_cli"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from transformers import AutoModel, ResNetForImageClassification

    if args.retrain or not (MODEL_DIR / "model.safetensors").is_file():
        train_resnet(args.steps)
    train_info = json.loads((MODEL_DIR / "train.json").read_text())
    full = ResNetForImageClassification.from_pretrained(MODEL_DIR).eval()
    head = full.classifier  # Flatten -> Linear on the pooled output
    base = AutoModel.from_pretrained(MODEL_DIR).eval()
    x, y = digit_tensors("evaluation", base.config)
    acc_before = head_accuracy(base, head, x, y)
    print(f"trained {train_info['steps']} steps in {train_info['seconds']:.1f} s; held-out "
          f"accuracy {acc_before:.4f}", file=sys.stderr)

    runs = []
    keeps = [float(k) for k in args.keeps.split(",")]
    configs = [(k, d, a) for k in keeps for d in ("tucker2", "cp")
               for a in ("uniform", "output-error")
               if d == "tucker2" or a == "uniform" or args.cp_output_error]
    configs.append((None, None, None))  # no options: the default configuration
    with tempfile.TemporaryDirectory() as tmp:
        for keep, dec, alloc in configs:
            out = Path(tmp) / f"{dec}-{alloc}-{keep}"
            options = [] if keep is None else [
                "--method", "conv", "--keep", str(keep), "--set", f"decomposition={dec}",
                "--alloc", alloc]
            summary, seconds, command = run_cli(options, out)
            compressed = lr.load(out)
            acc = head_accuracy(compressed, head, x, y)
            method = json.loads((out / "report.json").read_text())["result"]["method"]
            runs.append({
                "keep": summary["keep_target"], "decomposition": method["decomposition"],
                "alloc": summary["alloc"], "default": summary["default_configuration"],
                "conv_params_before": summary["targeted_params_before"],
                "conv_params_after": summary["targeted_params_after"],
                "params_before": summary["params_before"],
                "params_after": summary["params_after"],
                "keep_actual": summary["keep_actual"],
                "cosine": summary["quality_after"]["cosine"],
                "knn10_overlap": summary["quality_after"]["knn10_overlap"],
                "accuracy_before": acc_before, "accuracy_after": acc,
                "cli_seconds": round(seconds, 1), "command": command,
            })
            print(runs[-1], file=sys.stderr)

    lines = ["| keep | decomposition | alloc | params (whole model) | conv kernels kept | "
             "cosine | kNN-10 overlap | head accuracy | CLI s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        alloc = f"{r['alloc']} (default, no options)" if r["default"] else r["alloc"]
        lines.append(
            f"| {r['keep']} | {r['decomposition']} | {alloc} | {r['params_before']:,} -> "
            f"{r['params_after']:,} | {r['keep_actual']:.3f} | {r['cosine']:.4f} | "
            f"{r['knn10_overlap']:.3f} | {100 * r['accuracy_before']:.1f}% -> "
            f"{100 * r['accuracy_after']:.1f}% | {r['cli_seconds']} |")
    table = "\n".join([
        f"`lowrank compress` on a small HF ResNet ({runs[0]['params_before']:,} parameters, "
        f"trained {train_info['steps']} steps on scikit-learn's digits, {IMAGE_SIZE}x"
        f"{IMAGE_SIZE} inputs); cosine and kNN overlap of the pooled outputs on the 360 "
        "held-out digits as the CLI reports them; accuracy of the trained head on the same "
        "images; training-free (no fine-tuning).", "", *lines, ""])
    write_results(args.out, {"train": train_info, "image_size": IMAGE_SIZE,
                             "accuracy_before": acc_before, "runs": runs}, table)


if __name__ == "__main__":
    main()
