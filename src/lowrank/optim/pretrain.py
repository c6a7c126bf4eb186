"""Small causal-LM pretraining runs: one function shared by ``lowrank train`` and the benchmark.

A LLaMA-architecture model (transformers' ``LlamaForCausalLM``, random init, grouped-query
attention, RoPE) is trained on the embedded CPython documentation text with a byte-level
tokenizer (vocabulary 256: every UTF-8 byte is a token, so nothing is downloaded). Methods:
``adamw``; ``galore`` / ``galore-rsvd`` / ``galore-dct`` (:class:`GaLoreAdamW`); ``sltrain``,
``lost`` and ``lowrank`` (layers replaced by :class:`SparseLowRankLinear`, :class:`LOSTLinear`
or :class:`LowRankLinear`, trained with AdamW). Another optimizer (the benchmark's galore-torch
reference, ``benchmarks/galore_reference.py``) comes in through ``pretrain(optimizer=...)``.
transformers is imported lazily; ``lowrank.optim`` does not import this module.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, LowRankError
from ..utils.checks import check_finite, check_int
from .galore import BASIS_KEYS, GaLoreAdamW, galore_groups

METHODS = ("adamw", "galore", "galore-svd", "galore-rsvd", "galore-dct", "sltrain", "lost",
           "lowrank")


@dataclass
class PretrainConfig:
    """One pretraining run (all fields JSON-serialisable)."""

    method: str = "galore"
    steps: int = 100
    lr: float = 3e-3
    batch_size: int = 8
    seq_len: int = 256
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 352
    rank: int = 32
    update_proj_gap: int = 50
    scale: float = 0.25
    sl_density: float = 0.03
    sl_alpha: float = 32.0
    lost_sparsity: float = 0.05
    lost_gamma: float = 0.5
    lowrank_rank: int | None = None
    weight_decay: float = 0.0
    warmup: float = 0.1
    eval_batches: int = 8
    seed: int = 0
    per_layer: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        for key in ("steps", "batch_size", "seq_len", "hidden", "layers", "heads", "kv_heads",
                    "intermediate", "rank", "update_proj_gap", "eval_batches"):
            check_int(key, getattr(self, key))
        check_int("seed", self.seed, 0)
        for key in ("lr", "scale", "sl_alpha", "lost_gamma"):
            check_finite(key, getattr(self, key), 0, low_open=True)
        for key in ("weight_decay", "warmup", "sl_density", "lost_sparsity"):
            check_finite(key, getattr(self, key), 0, 1)  # fractions (weight decay: per step)
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ConfigError(f"hidden {self.hidden} must be a multiple of heads {self.heads}, "
                              f"and heads a multiple of kv_heads {self.kv_heads}")
        if self.rank > self.hidden:
            raise ConfigError(f"rank {self.rank} exceeds the model width {self.hidden} (the "
                              "smaller side of every projected matrix): use --rank "
                              f"{self.hidden} or less")
        if self.per_layer and not self.method.startswith("galore"):
            raise ConfigError(f"--per-layer is available for galore methods, not "
                              f"{self.method!r}")


@dataclass
class PretrainResult:
    config: dict
    params_total: int
    params_trainable: int
    val_loss: float
    val_ppl: float
    optimizer_state_bytes: int
    projected_state_bytes: int
    adamw_state_bytes_of_projected: int
    projector_bytes: int
    memory_estimate: dict
    wall_seconds: float
    step_seconds: float
    refresh_seconds: float
    refresh_count: int
    peak_rss_mib: float
    losses: list[float] = field(default_factory=list)
    cpu_seconds: float = float("nan")  # process CPU time of the training loop (all threads)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def byte_tokens(texts: list[str]) -> torch.Tensor:
    """Byte-level tokens of the passages joined by blank lines (int64, vocabulary 256)."""
    data = "\n\n".join(texts).encode("utf-8")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.long)


def text_data() -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) token streams from the embedded text's disjoint splits."""
    from ..calib.data import read_texts

    return byte_tokens(read_texts(None, "calibration")), byte_tokens(read_texts(None, "evaluation"))


def build_llama(cfg: PretrainConfig) -> nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` of the configured size (seeded)."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as exc:  # pragma: no cover
        raise LowRankError("pretraining needs transformers: pip install transformers") from exc
    conf = LlamaConfig(vocab_size=256, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                       num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                       num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.seq_len,
                       tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(conf)


def _replace(model: nn.Module, factory) -> None:  # noqa: ANN001
    from ..surgery import replace_module, select_linears

    for name, lin in select_linears(model).items():
        replace_module(model, name, factory(name, lin))


def matched_lowrank_rank(m: int, n: int, params: int) -> int:
    """Rank of a pure low-rank ``m x n`` layer with (about) ``params`` weight parameters."""
    return max(1, min(min(m, n), round(params / (m + n))))


def apply_method(model: nn.Module, cfg: PretrainConfig) -> None:
    """Swap the block linears for the method's layer (no-op for optimizer-only methods)."""
    from ..nn import LowRankLinear
    from ..nn.lost import LOSTLinear
    from ..nn.sparse_lowrank import SparseLowRankLinear

    torch.manual_seed(cfg.seed + 1)
    if cfg.method == "sltrain":
        _replace(model, lambda name, lin: SparseLowRankLinear.from_linear(
            lin, min(cfg.rank, *lin.weight.shape), cfg.sl_density, cfg.sl_alpha, cfg.seed,
            name, init="random"))
    elif cfg.method == "lost":
        _replace(model, lambda name, lin: LOSTLinear.from_linear(
            lin, min(cfg.rank, *lin.weight.shape), cfg.lost_sparsity, cfg.lost_gamma))
    elif cfg.method == "lowrank":
        def make(name: str, lin: nn.Linear) -> nn.Module:
            m, n = lin.weight.shape
            if cfg.lowrank_rank is not None:
                r = min(cfg.lowrank_rank, m, n)
            else:  # match SLTrain's parameter count of this layer
                r = matched_lowrank_rank(m, n, min(cfg.rank, m, n) * (m + n)
                                         + math.floor(cfg.sl_density * m * n))
            return LowRankLinear(n, m, r, bias=lin.bias is not None)
        _replace(model, make)


def make_optimizer(model: nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """The method's optimizer: :class:`GaLoreAdamW` for the galore methods, else AdamW."""
    betas, eps, wd = (0.9, 0.999), 1e-8, cfg.weight_decay
    if cfg.method in ("galore", "galore-svd", "galore-rsvd", "galore-dct"):
        basis = cfg.method.split("-")[1] if "-" in cfg.method else "svd"
        groups = galore_groups(model, rank=cfg.rank, update_proj_gap=cfg.update_proj_gap,
                               scale=cfg.scale, basis=basis, seed=cfg.seed)
        return GaLoreAdamW(groups, lr=cfg.lr, betas=betas, eps=eps, weight_decay=wd)
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                             betas=betas, eps=eps, weight_decay=wd)


def _state_bytes(opt: torch.optim.Optimizer) -> tuple[int, int, int, int]:
    """(all state, moments of projected matrices, AdamW moments of those, projector bytes),
    counting the tensors of the optimizer state."""
    total = projected = dense = projector = 0
    ranked = {id(p) for g in opt.param_groups if g.get("rank") is not None for p in g["params"]}
    for p, st in opt.state.items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                b = v.numel() * v.element_size()
                total += b
                if key in BASIS_KEYS:
                    projector += b
                elif id(p) in ranked and key in ("exp_avg", "exp_avg_sq"):
                    projected += b
        if id(p) in ranked:
            dense += 2 * p.numel() * p.element_size()
    return total, projected, dense, projector


@torch.no_grad()
def evaluate(model: nn.Module, val: torch.Tensor, seq_len: int, batches: int,
             batch_size: int) -> float:
    """Mean next-token loss on the first ``batches * batch_size`` disjoint windows."""
    model.eval()
    windows = val[: (val.numel() - 1) // seq_len * seq_len + 1]
    n = min(batches * batch_size, (windows.numel() - 1) // seq_len)
    total = 0.0
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        x = torch.stack([windows[i * seq_len:(i + 1) * seq_len] for i in idx])
        y = torch.stack([windows[i * seq_len + 1:(i + 1) * seq_len + 1] for i in idx])
        logits = model(input_ids=x).logits
        total += nn.functional.cross_entropy(logits.reshape(-1, 256), y.reshape(-1),
                                             reduction="sum").item()
    model.train()
    return total / (n * seq_len)


def pretrain(cfg: PretrainConfig, data: tuple[torch.Tensor, torch.Tensor] | None = None,
             quiet: bool = True, log: Callable[[str], None] | None = None,
             optimizer: Callable[[nn.Module, PretrainConfig], torch.optim.Optimizer]
             | None = None) -> PretrainResult:
    """Train one configuration; same seed means same init, same batches, same tokens.

    ``optimizer(model, cfg)`` replaces :func:`make_optimizer` (e.g. a reference
    implementation to compare against); basis refresh times are those of
    :class:`GaLoreAdamW`, zero for any other optimizer."""
    import resource

    from ..utils.progress import progress
    from .memory import estimate_memory

    train, val = data if data is not None else text_data()
    model = build_llama(cfg)
    apply_method(model, cfg)
    opt = (optimizer or make_optimizer)(model, cfg)
    est = estimate_memory(model, opt, per_layer=cfg.per_layer)
    if log is not None:
        log(str(est))
    if cfg.per_layer:  # galore methods only (checked by the config)
        opt.enable_per_layer(model)
    warm = max(1, int(cfg.warmup * cfg.steps))

    def schedule(step: int) -> float:  # linear warmup, cosine down to 10%
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, cfg.steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    gen = torch.Generator().manual_seed(cfg.seed)
    starts = torch.randint(0, train.numel() - cfg.seq_len - 1,
                           (cfg.steps, cfg.batch_size), generator=gen)
    offs = torch.arange(cfg.seq_len)
    losses: list[float] = []
    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    for step in progress(range(cfg.steps), f"train {cfg.method}", quiet=quiet):
        idx = starts[step][:, None] + offs
        x, y = train[idx], train[idx + 1]
        logits = model(input_ids=x).logits
        loss = nn.functional.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append(float(loss.item()))
        if not math.isfinite(losses[-1]):
            break
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    val_loss = evaluate(model, val, cfg.seq_len, cfg.eval_batches, cfg.batch_size)
    total, projected, dense, projector = _state_bytes(opt)
    refresh_s, refresh_n = (opt.refresh_seconds, opt.refresh_count) \
        if isinstance(opt, GaLoreAdamW) else (0.0, 0)
    result = PretrainResult(
        config=asdict(cfg),
        params_total=sum(p.numel() for p in model.parameters()),
        params_trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        val_loss=val_loss, val_ppl=math.exp(min(val_loss, 50.0)),
        optimizer_state_bytes=total, projected_state_bytes=projected,
        adamw_state_bytes_of_projected=dense, projector_bytes=projector,
        memory_estimate=est.to_dict(), wall_seconds=wall, step_seconds=wall / max(1, len(losses)),
        refresh_seconds=refresh_s, refresh_count=refresh_n,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, losses=losses,
        cpu_seconds=cpu)
    result.model = model  # type: ignore[attr-defined]  # not serialised
    return result
