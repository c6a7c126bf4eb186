"""Benchmark: low-rank pretraining of a small LLaMA on the embedded text, all methods, same tokens.

Usage:  python benchmarks/pretrain.py [--steps 100] [--batch-size 4] [--quick]
                                     [--hidden 256 --layers 4 --heads 8 --kv-heads 4
                                      --intermediate 688 --rank 64]
Writes benchmarks/results/pretrain.json, .md and pretrain.png (loss curves), and saves the
trained AdamW model to benchmarks/results/pretrain_adamw_model/ (the causal LM of the
compression benchmarks).

Model: transformers LlamaForCausalLM, hidden 256, 4 layers, 8 heads (4 KV heads), MLP 688,
byte-level vocabulary 256, sequence length 256 (about 3M parameters). Every row sees the same
init seed, the same batches and the same number of tokens; warmup 10% then cosine to 10%;
weight decay 0. GaLore: rank = hidden/4 = 64, update_proj_gap 50, scale 0.25, proj_type std,
on every attention and MLP linear (embeddings, LM head and norms use AdamW). SLTrain: r = rank,
delta 0.03, alpha 32. LOST: r = rank, channel sparsity 0.05, gamma 0.5. Low-rank: per-layer
rank matched to
SLTrain's parameter count. Learning-rate sweep (best validation perplexity is reported):
AdamW {1e-3, 3e-3, 1e-2}; SLTrain / LOST / low-rank {3e-3, 1e-2}; GaLore-svd {5e-3, 1e-2};
GaLore-rsvd, -dct and the galore-torch reference (``galore_reference.py``; needs
``pip install galore-torch``) reuse GaLore-svd's best learning rate.
"""

from __future__ import annotations

import argparse
import math
import time

from common import RESULTS, write_results  # benchmarks/common.py (run as scripts)
from galore_reference import METHOD as REFERENCE
from galore_reference import available, pretrain_reference

from lowrank.models.byte_tokenizer import byte_level_tokenizer
from lowrank.optim.pretrain import PretrainConfig, pretrain, text_data

SWEEP = {"adamw": [1e-3, 3e-3, 1e-2], "galore": [5e-3, 1e-2], "sltrain": [3e-3, 1e-2],
         "lost": [3e-3, 1e-2], "lowrank": [3e-3, 1e-2]}
FOLLOW = {"galore-rsvd": "galore", "galore-dct": "galore", REFERENCE: "galore"}
LABEL = {"adamw": "AdamW", "galore": "GaLore svd (ours)", "galore-rsvd": "GaLore rsvd (ours)",
         "galore-dct": "GaLore dct (ours)", "galore-torch": "galore-torch (reference, svd)",
         "sltrain": "SLTrain", "lost": "LOST", "lowrank": "pure low-rank (matched params)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="one LR per method, 20 steps")
    parser.add_argument("--out", default=str(RESULTS / "pretrain"))
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--rank", type=int, default=None, help="default: hidden / 4")
    args = parser.parse_args()
    if not available():
        parser.error(f"the {REFERENCE} row needs the reference package: pip install galore-torch")
    shape = {"hidden": args.hidden, "layers": args.layers, "heads": args.heads,
             "kv_heads": args.kv_heads, "intermediate": args.intermediate,
             "rank": args.rank or args.hidden // 4}
    steps = 20 if args.quick else args.steps
    sweep = {k: v[-1:] for k, v in SWEEP.items()} if args.quick else SWEEP

    data = text_data()
    runs: dict[str, list] = {}
    t_all = time.perf_counter()
    for method, lrs in sweep.items():
        for lr in lrs:
            res = pretrain(PretrainConfig(method=method, steps=steps, lr=lr,
                                          batch_size=args.batch_size, **shape), data)
            print(f"{method} lr={lr:g}: val ppl {res.val_ppl:.3f} ({res.wall_seconds:.1f}s)",
                  flush=True)
            runs.setdefault(method, []).append(res)
    best = {m: min(rs, key=lambda r: r.val_loss) for m, rs in runs.items()}
    for method, leader in FOLLOW.items():
        cfg = PretrainConfig(method=leader if method == REFERENCE else method, steps=steps,
                             lr=best[leader].config["lr"], batch_size=args.batch_size, **shape)
        res = pretrain_reference(cfg, data) if method == REFERENCE else pretrain(cfg, data)
        print(f"{method} lr={res.config['lr']:g}: val ppl {res.val_ppl:.3f}", flush=True)
        runs[method] = [res]
        best[method] = res
    total_seconds = time.perf_counter() - t_all
    micro = refresh_micro(shape, reps=1 if args.quick else 3)

    order = ["adamw", "galore", "galore-rsvd", "galore-dct", "galore-torch", "sltrain", "lost",
             "lowrank"]
    adamw = best["adamw"]
    ref = best["galore-torch"]
    n_proj = 7 * shape["layers"]
    rows = []
    for m in order:
        r = best[m]
        per_refresh = (r.refresh_seconds / (r.refresh_count / n_proj)
                       if r.refresh_count else float("nan"))
        rows.append({
            "method": m, "label": LABEL[m], "lr": r.config["lr"],
            "lr_sweep": {f"{x.config['lr']:g}": round(x.val_ppl, 4) for x in runs[m]},
            "params": r.params_total, "val_ppl": r.val_ppl,
            "ppl_vs_adamw": r.val_ppl / adamw.val_ppl - 1,
            "optimizer_state_bytes": r.optimizer_state_bytes,
            "projected_state_bytes": r.projected_state_bytes,
            "projected_state_fraction": (r.projected_state_bytes
                                         / r.adamw_state_bytes_of_projected
                                         if r.adamw_state_bytes_of_projected else None),
            "projector_bytes": r.projector_bytes,
            "estimated_total_bytes": r.memory_estimate["total"],
            "wall_seconds": r.wall_seconds, "step_seconds": r.step_seconds,
            "refresh_seconds": r.refresh_seconds, "refresh_count": r.refresh_count,
            "refresh_seconds_per_full_refresh": per_refresh,
            "wall_ratio_vs_galore_torch": (r.wall_seconds / ref.wall_seconds
                                           if m.startswith("galore") else None),
            "cpu_seconds": r.cpu_seconds,
            "cpu_ratio_vs_galore_torch": (r.cpu_seconds / ref.cpu_seconds
                                          if m.startswith("galore") else None),
            "refresh_speedup_vs_galore_torch": (
                (ref.refresh_seconds / (ref.refresh_count / n_proj)) / per_refresh
                if m.startswith("galore") and r.refresh_count else None),
            "losses": r.losses,
        })

    adamw.model.save_pretrained(str(RESULTS / "pretrain_adamw_model"))
    byte_level_tokenizer().save_pretrained(str(RESULTS / "pretrain_adamw_model"))
    _plot(rows, args.out + ".png")

    def fmt(x: float | None, spec: str) -> str:
        return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)

    cfg = PretrainConfig(steps=steps, batch_size=args.batch_size, **shape)
    tokens = steps * cfg.batch_size * cfg.seq_len
    lines = [
        f"Small LLaMA ({adamw.params_total / 1e6:.2f}M parameters: hidden {cfg.hidden}, "
        f"{cfg.layers} layers, {cfg.heads} heads ({cfg.kv_heads} KV), MLP {cfg.intermediate}, "
        f"seq {cfg.seq_len}, byte vocab), "
        f"{steps} steps x {cfg.batch_size} x {cfg.seq_len} = {tokens} tokens per row, "
        f"rank {cfg.rank}, 1 CPU thread; total benchmark time {total_seconds:.0f} s.",
        "",
        "| method | lr (sweep: val ppl) | params | val ppl | vs AdamW | optimizer state | "
        "projected / AdamW state | projector | wall s | wall / galore-torch | CPU s | "
        "CPU / galore-torch | refresh s (count) | s per full refresh | "
        "refresh speedup vs galore-torch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sweep_txt = ", ".join(f"{k}: {v:.2f}" for k, v in r["lr_sweep"].items())
        lines.append(
            f"| {r['label']} | {r['lr']:g} ({sweep_txt}) | {r['params']:,} | "
            f"{r['val_ppl']:.3f} | {r['ppl_vs_adamw']:+.1%} | "
            f"{r['optimizer_state_bytes'] / 2**20:.2f} MiB | "
            f"{fmt(r['projected_state_fraction'], '.1%')} | "
            f"{r['projector_bytes'] / 2**10:.1f} KiB | {r['wall_seconds']:.1f} | "
            f"{fmt(r['wall_ratio_vs_galore_torch'], '.2f')} | {r['cpu_seconds']:.1f} | "
            f"{fmt(r['cpu_ratio_vs_galore_torch'], '.2f')} | "
            f"{r['refresh_seconds']:.3f} ({r['refresh_count']}) | "
            f"{fmt(r['refresh_seconds_per_full_refresh'], '.4f')} | "
            f"{fmt(r['refresh_speedup_vs_galore_torch'], '.1f')} |")
    lines += ["", "Basis refresh in isolation (ms per matrix, median of repeats, 1 thread; "
              "galore-torch = GaLoreProjector.get_orthogonal_matrix, full fp32 SVD):", "",
              "| shape (m x n), rank | galore-torch | ours svd | ours rsvd | ours dct | "
              "speedup rsvd | speedup dct |", "|---|---|---|---|---|---|---|"]
    for r in micro:
        lines.append(f"| {r['m']} x {r['n']}, r {r['rank']} | {r['reference_ms']:.2f} | "
                     f"{r['svd_ms']:.2f} | {r['rsvd_ms']:.2f} | {r['dct_ms']:.2f} | "
                     f"{r['reference_ms'] / r['rsvd_ms']:.1f}x | "
                     f"{r['reference_ms'] / r['dct_ms']:.1f}x |")
    table = "\n".join(lines) + "\n"
    write_results(args.out, {"steps": steps, "batch_size": cfg.batch_size,
                             "seq_len": cfg.seq_len, "tokens_per_row": tokens,
                             "total_seconds": total_seconds, "rows": rows,
                             "refresh_micro": micro}, table)


def refresh_micro(shape: dict, reps: int = 3) -> list[dict]:
    """Time one basis computation per method on the benchmark's and LLaMA-60M/130M shapes."""
    import statistics

    import torch

    from lowrank.optim import projectors as pj

    try:
        from galore_torch.galore_projector import GaLoreProjector
    except ImportError:
        return []

    def clock(fn, *args) -> float:  # noqa: ANN001, ANN002
        fn(*args)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn(*args)
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    out = []
    gen = torch.Generator().manual_seed(0)
    h, f, rk = shape["hidden"], shape["intermediate"], shape["rank"]
    for m, n, r in [(h, h, rk), (f, h, rk), (512, 512, 128), (1376, 512, 128),
                    (1024, 1024, 256)]:
        g = torch.randn(m, n, generator=gen)
        side = pj.choose_side((m, n), "std")
        ref = GaLoreProjector(r)
        kind = "right" if m >= n else "left"
        out.append({"m": m, "n": n, "rank": r,
                    "reference_ms": clock(ref.get_orthogonal_matrix, g, r, kind),
                    "svd_ms": clock(pj.svd_basis, g, side, r),
                    "rsvd_ms": clock(pj.rsvd_basis, g, side, r, 0),
                    "dct_ms": clock(pj.dct_indices, g, side, r)})
    return out


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        ax.plot(r["losses"], label=f"{r['label']} (lr {r['lr']:g})", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats/byte)")
    ax.set_ylim(top=min(6.0, max(max(r["losses"]) for r in rows)))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
