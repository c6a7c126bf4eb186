"""``GaLoreAdamW``: AdamW whose moments live in a low-rank projection of each matrix gradient.

Paper: "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection" (Zhao et al.,
ICML 2024), with the SVD-free DCT basis of "SVD-Free Low-Rank Adaptive Gradient Optimization
for Large Language Models" (Modoranu et al., 2025) and a randomized SVD as in GaLore 2.

For a projected ``m x n`` parameter with gradient ``G`` and basis ``P`` (left) or ``Q`` (right):
``R = P^T G`` or ``G Q``; Adam moments are kept on ``R``; the step is
``W <- W (1 - lr wd) - lr * scale * back(M_hat / (sqrt(V_hat) + eps))`` with torch's AdamW bias
correction. Every ``update_proj_gap`` steps the basis is recomputed from the current gradient
(moments are kept, as in the paper); refreshes are staggered across the parameters of a group so
no single step pays for every SVD. Groups without ``rank`` are exactly ``torch.optim.AdamW``.

The optimizer state holds tensors and ints only (basis tensor or int32 DCT indices, counters),
so ``torch.load(..., weights_only=True)`` restores it and a resumed run follows the same path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, LowRankError
from ..utils.checks import check_finite, check_int
from . import projectors as pj

GALORE_DEFAULTS: dict[str, Any] = {
    "update_proj_gap": 200, "scale": 0.25, "proj_type": "std", "basis": "svd", "dct_norm": 2,
    "rsvd_oversample": 8, "rsvd_power_iters": 1, "stagger": True, "seed": 0, "inner": "adamw",
}
INNER = ("adamw", "sgd")
# state keys of a projector: dense bases or int32 DCT indices; "*_right" only for proj_type full
BASIS_KEYS = ("basis", "basis_right", "dct_idx", "dct_idx_right")
# group keys that define a projected group's state: a saved state must agree on all of them
PROJECTION_KEYS = ("rank", *GALORE_DEFAULTS)


def _check_hyper(group: dict, where: str = "") -> None:
    """The AdamW hyper-parameters of any group: finite and in range (``where`` names the
    group in the message)."""
    for key in ("lr", "eps", "weight_decay"):
        check_finite(key + where, group[key], 0)
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ConfigError(f"betas{where} must be a pair (beta1, beta2), got {betas!r}")
    for k, beta in enumerate(betas):
        check_finite(f"betas[{k}]{where}", beta, 0, 1, high_open=True)


def _check_group(group: dict, where: str = "") -> None:
    check_int("rank" + where, group["rank"])
    check_int("update_proj_gap" + where, group["update_proj_gap"])
    check_finite("scale" + where, group["scale"], 0, low_open=True)
    check_int("rsvd_oversample" + where, group["rsvd_oversample"], 0)
    check_int("rsvd_power_iters" + where, group["rsvd_power_iters"], 0)
    check_int("seed" + where, group["seed"], 0)
    if not isinstance(group["stagger"], bool):
        raise ConfigError(f"stagger{where} must be True or False, got {group['stagger']!r}")
    if group["basis"] not in pj.BASES:
        raise ConfigError(f"basis must be one of {pj.BASES}, got {group['basis']!r}")
    if group["proj_type"] not in pj.PROJ_TYPES:
        raise ConfigError(f"proj_type must be one of {pj.PROJ_TYPES}, got "
                          f"{group['proj_type']!r}")
    if group["inner"] not in INNER:
        raise ConfigError(f"inner must be one of {INNER}, got {group['inner']!r}")
    if group["dct_norm"] not in (1, 2):
        raise ConfigError(f"dct_norm must be 1 or 2, got {group['dct_norm']!r}")


def _check_params(group: dict) -> None:
    """The parameters of a projected group: whole 2-D matrices."""
    for p in group["params"]:
        if type(p).__name__ == "DTensor":
            raise LowRankError(
                "GaLoreAdamW got a sharded DTensor parameter (FSDP2): projected optimizers are "
                "supported with DDP (torch.nn.parallel.DistributedDataParallel) on whole "
                "parameters; keep projected groups out of FSDP or use DDP")
        if p.ndim != 2:
            raise LowRankError(
                f"a projected group (with 'rank') holds a {p.ndim}-D parameter of shape "
                f"{tuple(p.shape)}: GaLore needs 2-D weight matrices. Flattened 1-D parameters "
                "come from DeepSpeed ZeRO or FSDP1, which are not supported with projected "
                "optimizers; use DDP, and put biases/norms in a group without 'rank'")


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW with GaLore low-rank gradient projection on groups that carry ``rank``.

    Group keys (galore-torch names): ``rank``, ``update_proj_gap`` (default 200), ``scale``
    (default 0.25), ``proj_type`` (``std`` | ``reverse_std`` | ``left`` | ``right`` | ``full``,
    the last projecting both sides, ``P^T G Q``, with r x r moments); ours:
    ``basis`` (``svd`` | ``rsvd`` | ``dct``), ``dct_norm`` (1 or 2), ``rsvd_oversample``,
    ``rsvd_power_iters``, ``stagger`` (spread refreshes over the group), ``seed`` (rsvd test
    matrices) and ``inner`` (``adamw``, or ``sgd`` = no moments, update ``scale * back(R)``).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        _check_hyper(defaults)
        super().__init__(params, {**defaults, "betas": tuple(betas)})
        self.refresh_seconds = 0.0  # wall time spent computing bases (not part of the state)
        self.refresh_count = 0
        self._per_layer = False
        # DCT columns gathered from the stored indices, rebuilt after each refresh (not state)
        self._dct_columns: dict[int, tuple[int, pj.Basis]] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after validating its hyper-parameters; a group with ``rank`` gets the
        GaLore defaults."""
        if param_group.get("rank") is not None:
            for key, value in GALORE_DEFAULTS.items():
                param_group.setdefault(key, value)
        where = f" of param group {len(self.param_groups)}"
        _check_hyper({**self.defaults, **param_group}, where)
        if param_group.get("rank") is not None:
            _check_group(param_group, where)
        super().add_param_group(param_group)
        if param_group.get("rank") is not None:
            _check_params(self.param_groups[-1])

    # -- state -------------------------------------------------------------------------------
    def _index(self) -> dict[int, tuple[int, int, int]]:
        """param id -> (global index, index among projected params of its group, group size)."""
        out: dict[int, tuple[int, int, int]] = {}
        k = 0
        for group in self.param_groups:
            n = len(group["params"])
            for j, p in enumerate(group["params"]):
                out[id(p)] = (k, j, n)
                k += 1
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; tensors move to their parameter's device (indices stay int32).

        The saved groups must agree with this optimizer's on the keys that define the
        projection (``rank``, ``proj_type``, ``basis``, ``update_proj_gap``, ...): the saved
        bases and moments were built for them, and torch would otherwise silently replace
        the configured values by the saved ones. Other hyper-parameters (``lr``, ...) are
        restored from the state, as in torch.
        """
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) == len(self.param_groups):
            for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
                _check_same_projection(i, saved, group)
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if not st:
                    continue
                for key in BASIS_KEYS:
                    if key in st and isinstance(st[key], torch.Tensor):
                        dtype = torch.int32 if key.startswith("dct_idx") else p.dtype
                        st[key] = st[key].to(device=p.device, dtype=dtype)
        self._dct_columns.clear()

    # -- step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = self._index()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._step_param(p, group, index[id(p)])
        return loss

    def _step_param(self, p: torch.Tensor, group: dict, where: tuple[int, int, int]) -> None:
        if p.grad.is_sparse:
            raise LowRankError("GaLoreAdamW does not support sparse gradients")
        if group.get("rank") is None:
            self._adamw(p, group)
        else:
            self._galore(p, group, where)

    def _adamw(self, p: torch.Tensor, group: dict) -> None:
        """The single-tensor ``torch.optim.AdamW`` update, operation for operation."""
        grad = p.grad
        st = self.state[p]
        if not st:
            st["step"] = 0
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        st["step"] += 1
        step = float(st["step"])
        if wd != 0:
            p.mul_(1 - lr * wd)
        st["exp_avg"].lerp_(grad, 1 - beta1)
        st["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        denom = (st["exp_avg_sq"].sqrt() / bias_correction2**0.5).add_(eps)
        p.addcdiv_(st["exp_avg"], denom, value=-step_size)

    def _needs_refresh(self, st: dict, gap: int) -> bool:
        if "basis" not in st and "dct_idx" not in st:
            return True
        return (st["step"] + st["refresh_offset"]) % gap == 0

    def _refresh(self, p: torch.Tensor, grad: torch.Tensor, group: dict, st: dict,
                 global_index: int) -> None:
        start = time.perf_counter()
        side, rank = st["side"], st["rank"]
        if group["basis"] == "svd":
            new, key = pj.svd_basis(grad, side, rank), "basis"
        elif group["basis"] == "rsvd":
            seed = pj.rsvd_seed(group["seed"], global_index, st["step"])
            new = pj.rsvd_basis(grad, side, rank, seed, group["rsvd_oversample"],
                                group["rsvd_power_iters"])
            key = "basis"
        else:
            new, key = pj.dct_indices(grad, side, rank, group["dct_norm"]), "dct_idx"
        if side == pj.BOTH:
            st[key], st[key + "_right"] = new
        else:
            st[key] = new
        st["refreshes"] += 1
        self.refresh_count += 1
        self.refresh_seconds += time.perf_counter() - start

    def basis_of(self, p: torch.Tensor) -> pj.Basis:
        """The current projection basis of ``p``, dense: ``P`` (m x r), ``Q`` (n x r), or the
        pair ``(P, Q)`` for ``proj_type="full"``."""
        st = self.state[p]
        both = st["side"] == pj.BOTH
        if "basis" in st:
            return (st["basis"], st["basis_right"]) if both else st["basis"]
        cached = self._dct_columns.get(id(p))
        if cached is not None and cached[0] == st["refreshes"]:
            return cached[1]
        sizes = pj.basis_sizes(tuple(p.shape), st["side"])
        keys = ("dct_idx", "dct_idx_right") if both else ("dct_idx",)
        cols = tuple(pj.dct_basis(size, st[key], p.dtype, p.device)
                     for size, key in zip(sizes, keys, strict=True))
        basis = cols if both else cols[0]
        self._dct_columns[id(p)] = (st["refreshes"], basis)
        return basis

    def _galore(self, p: torch.Tensor, group: dict, where: tuple[int, int, int]) -> None:
        grad = p.grad
        st = self.state[p]
        gap = group["update_proj_gap"]
        if not st:
            side = pj.choose_side(tuple(p.shape), group["proj_type"])
            st["step"] = 0
            st["side"] = side
            st["rank"] = pj.effective_rank(tuple(p.shape), side, group["rank"])
            st["refresh_offset"] = (where[1] * gap) // where[2] if group["stagger"] else 0
            st["refreshes"] = 0
        if self._needs_refresh(st, gap):
            self._refresh(p, grad, group, st, where[0])
        basis = self.basis_of(p)
        side = st["side"]
        low = pj.project(grad, basis, side)
        lr, wd, scale = group["lr"], group["weight_decay"], group["scale"]
        st["step"] += 1
        if wd != 0:
            p.mul_(1 - lr * wd)
        if group["inner"] == "sgd":
            p.add_(pj.project_back(low, basis, side), alpha=-lr * scale)
            return
        if "exp_avg" not in st:
            st["exp_avg"] = torch.zeros_like(low)
            st["exp_avg_sq"] = torch.zeros_like(low)
        beta1, beta2 = group["betas"]
        step = float(st["step"])
        st["exp_avg"].lerp_(low, 1 - beta1)
        st["exp_avg_sq"].mul_(beta2).addcmul_(low, low, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        denom = (st["exp_avg_sq"].sqrt() / bias_correction2**0.5).add_(group["eps"])
        norm = st["exp_avg"] / denom
        p.add_(pj.project_back(norm, basis, side), alpha=-lr * scale / bias_correction1)

    # -- per-layer updates -------------------------------------------------------------------
    def enable_per_layer(self, model: nn.Module | None = None,
                         accumulation_steps: int = 1) -> list[Any]:
        """Step each parameter inside backward, as soon as its gradient is accumulated.

        Full gradients of all layers then never coexist (the paper's per-layer weight update).
        Returns the hook handles (``handle.remove()`` to undo). ``optimizer.step()`` becomes a
        no-op for hooked parameters because their gradient is freed after the update.

        Raises :class:`LowRankError` with gradient accumulation (the hook would step on every
        micro-batch) and under DDP (hooks fire before DDP's all-reduce, so ranks would step on
        local gradients); the supported path there is the ordinary ``optimizer.step()``.
        """
        if accumulation_steps != 1:
            raise LowRankError(
                f"per-layer updates step on every backward, so gradient accumulation "
                f"(accumulation_steps={accumulation_steps}) cannot work: expected 1, or call "
                "optimizer.step() once per accumulated batch without per-layer mode")
        from torch.nn.parallel import DistributedDataParallel

        distributed = (torch.distributed.is_available() and torch.distributed.is_initialized()
                       and torch.distributed.get_world_size() > 1)
        if isinstance(model, DistributedDataParallel) or distributed:
            raise LowRankError(
                "per-layer updates do not work under DDP/torchrun (world size > 1): hooks fire "
                "before the gradient all-reduce. Supported path: DDP with the ordinary "
                "optimizer.step() (projected state is replicated and identical on every rank)")
        index = self._index()
        handles = []
        for group in self.param_groups:
            for p in group["params"]:
                if not p.requires_grad:
                    continue

                def hook(param: torch.Tensor, group: dict = group) -> None:
                    with torch.no_grad():
                        self._step_param(param, group, index[id(param)])
                    param.grad = None

                handles.append(p.register_post_accumulate_grad_hook(hook))
        self._per_layer = True
        return handles


def _check_same_projection(index: int, saved: dict, group: dict) -> None:
    keys = PROJECTION_KEYS if group.get("rank") is not None or saved.get("rank") is not None \
        else ()
    for key in keys:
        if saved.get(key) != group.get(key):
            raise ConfigError(
                f"param group {index}: the saved optimizer state has {key}={saved.get(key)!r} "
                f"but this optimizer is configured with {key}={group.get(key)!r}; load a state "
                "saved with the same projection settings, or configure the optimizer as saved")


def check_distributed_wrapper(model: nn.Module) -> None:
    """Raise when ``model`` is wrapped by a sharding engine that flattens parameters.

    Projected optimizers need each weight as a whole matrix: DeepSpeed ZeRO (any stage) and
    FSDP (flat parameters or DTensor shards) are refused; DDP is the supported path.
    """
    names = {type(m).__name__ for m in model.modules()} | {type(model).__name__}
    bad = names & {"DeepSpeedEngine", "FullyShardedDataParallel", "FSDPModule"}
    if not bad and any(type(p).__name__ == "DTensor" for p in model.parameters()):
        bad = {"FSDP2 (fully_shard)"}
    if bad:
        raise LowRankError(
            f"GaLoreAdamW cannot run on a model wrapped by {sorted(bad)}: the gradient "
            "projection needs whole 2-D matrices. Supported: torchrun + DDP "
            "(DistributedDataParallel) with the ordinary optimizer.step()")


def galore_groups(model: nn.Module, targets: Any = "all-linear", rank: int = 128,
                  update_proj_gap: int = 200, scale: float = 0.25, proj_type: str = "std",
                  basis: str = "svd", ignore: Any = None, **extra: Any) -> list[dict]:
    """Parameter groups for :class:`GaLoreAdamW`: the weights of the targeted linear layers get
    the projection settings, every other trainable parameter goes to a plain AdamW group.

    ``targets="all-linear"`` means the linear layers inside the repeated blocks (attention and
    MLP projections; embeddings and the LM head stay dense), as in the HF Trainer option.
    """
    from ..surgery import select_linears

    check_distributed_wrapper(model)
    chosen = select_linears(model, None if targets == "all-linear" else targets, ignore)
    projected = [m.weight for m in chosen.values() if m.weight.requires_grad]
    ids = {id(p) for p in projected}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    group = {"params": projected, "rank": check_int("rank", rank),
             "update_proj_gap": check_int("update_proj_gap", update_proj_gap),
             "scale": check_finite("scale", scale, 0, low_open=True), "proj_type": proj_type,
             "basis": basis, **extra}
    return [g for g in ({"params": rest}, group) if g["params"]]
