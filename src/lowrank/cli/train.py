"""``lowrank train``: pretrain a small LLaMA on the embedded text with a low-rank method.

Writes ``OUT/train.json`` (validation perplexity, optimizer-state bytes, memory estimate, peak
RSS, step and refresh times, the loss curve) and ``OUT/loss.png``; the directory is written
atomically. Progress and the memory estimate go to stderr; ``--json`` prints one JSON object.
"""

from __future__ import annotations

import json
import math
import sys

import typer

from ..errors import LowRankError


def train_command(
    method: str = typer.Option(
        "galore", help="galore (svd basis), galore-rsvd, galore-dct, adamw, sltrain, lost or "
                       "lowrank"),
    steps: int = typer.Option(100, help="optimizer steps"),
    rank: int = typer.Option(32, help="GaLore projection rank / SLTrain and LOST rank"),
    lr: float | None = typer.Option(None, help="peak learning rate (default: 1e-2 for "
                                               "galore*, 3e-3 otherwise)"),
    batch_size: int = typer.Option(4, help="sequences per step"),
    seq_len: int = typer.Option(256, help="tokens (bytes) per sequence"),
    hidden: int = typer.Option(128, help="model width"),
    layers: int = typer.Option(4, help="transformer blocks"),
    update_proj_gap: int = typer.Option(50, help="GaLore basis refresh period T"),
    per_layer: bool = typer.Option(False, "--per-layer",
                                   help="GaLore: step each layer inside backward"),
    seed: int = typer.Option(0, help="random seed (init and batches)"),
    out: str = typer.Option("lowrank-train", help="output directory (written atomically; "
                                                  "may replace a previous lowrank output)"),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="replace --out even if it holds other files"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object to stdout"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress on stderr"),
) -> None:
    """Pretrain a small LLaMA-architecture LM on the embedded text (GaLore, SLTrain, LOST, ...)."""
    from ..io.atomic import atomic_directory, check_output_dir
    from ..optim.pretrain import PretrainConfig, pretrain

    if lr is None:
        lr = 1e-2 if method.startswith("galore") else 3e-3
    cfg = PretrainConfig(method=method, steps=steps, rank=rank, lr=lr, batch_size=batch_size,
                         seq_len=seq_len, hidden=hidden, layers=layers,
                         intermediate=max(8, int(round(hidden * 2.75 / 8)) * 8),
                         update_proj_gap=update_proj_gap, per_layer=per_layer, seed=seed)
    check_output_dir(out, overwrite=overwrite)  # before training, not after

    def log(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr)

    result = pretrain(cfg, quiet=quiet, log=log)
    if not all(math.isfinite(x) for x in [*result.losses, result.val_loss]):
        raise LowRankError(f"training diverged: the loss became non-finite at step "
                           f"{len(result.losses)} of {steps} (lr {lr:g}); lower --lr; nothing "
                           "was written")
    payload = result.to_dict()
    with atomic_directory(out, overwrite=overwrite, kind="train") as tmp:
        (tmp / "train.json").write_text(json.dumps(payload, indent=2, allow_nan=False))
        _plot(result.losses, f"{method} (lr {lr:g})", tmp / "loss.png")
    summary = {k: payload[k] for k in ("val_ppl", "val_loss", "params_total",
                                        "optimizer_state_bytes", "wall_seconds",
                                        "step_seconds", "refresh_seconds", "peak_rss_mib")}
    summary = {"method": method, "steps": steps, "out": out, **summary}
    if as_json:
        sys.stdout.write(json.dumps(summary, allow_nan=False) + "\n")
    else:
        for key, value in summary.items():
            print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")


def _plot(losses: list[float], label: str, path) -> None:  # noqa: ANN001
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats/byte)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
