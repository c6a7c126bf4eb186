"""Sequential (error-correcting) calibration: refit factors block by block on the inputs that
the already-compressed upstream model produces.

After the ranks are allocated on statistics of the original model, every targeted layer is
refitted in execution order, one group of layers that share an input at a time. With ``x`` the
layer's input in the original model and ``x~`` its input in the compressed model (every
earlier layer already refitted), the new factors solve the ridge reduced-rank regression

    min_{rank(W') <= k}  ||W X - W' X~||_F^2 + lam ||W'||_F^2,

whose exact solution is ``W' = SVD_k(W C S^-T) S^-1`` with ``C = X X~^T`` and
``S S^T = X~ X~^T + lam I`` (the whitened truncation in the space of the compressed inputs; it
reduces to SVD-LLM when ``x~ = x`` and ``lam = 0``). This is the layer-wise error correction
of GPTQ-style pipelines applied to low-rank factors. The block inputs of both models are
cached once (as GPTQ does), so each group costs one pass through its own block only, and
memory stays at one block's activations for the calibration set plus one input site's
statistics.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import torch
from torch import nn

from ..blocks import capture_block_inputs, run_block, with_hidden
from ..calib.data import TokenBatch, TokenizedText, masked_rows
from ..errors import ConfigError
from ..linalg import sqrt_gram, whitened_svd
from ..nn import LowRankLinear
from ..surgery import ModuleCall, StopForward, block_lists, capture_inputs
from ..utils.progress import progress


@torch.no_grad()
def sequential_refit(
    original: nn.Module,
    compressed: nn.Module,
    ranks: dict[str, int | None],
    tokens: TokenizedText,
    *,
    floor: float = 1e-6,
    damping: float = 1e-2,
    batch_size: int = 16,
    quiet: bool = True,
) -> dict[str, float]:
    """Refit every factorized layer named in ``ranks`` in execution order (see module doc).

    ``damping`` is ``lam`` relative to the mean eigenvalue of ``X~ X~^T``. Returns, per layer,
    the relative change of its represented weight ``B A``. Layers left dense are not touched.
    """
    pairs = block_lists(compressed)
    orig_pairs = dict(block_lists(original))
    if not pairs:
        raise ConfigError("sequential calibration needs a model with repeated blocks "
                          "(a ModuleList of transformer layers)")
    device = next(compressed.parameters()).device
    batches = [b.to(device) for b in tokens.batches(batch_size, trim=False)]
    prefix, comp_blocks = pairs[0]
    orig_blocks = orig_pairs[prefix]
    outside = [n for n in ranks if not n.startswith(prefix + ".")]
    if outside:
        raise ConfigError(f"sequential calibration refits layers inside '{prefix}' only; "
                          f"these targets are outside it: {outside[:3]}")
    orig_in = capture_block_inputs(original, orig_blocks, batches)
    comp_in = capture_block_inputs(compressed, comp_blocks, batches)
    change: dict[str, float] = {}
    for index in progress(range(len(comp_blocks)), "sequential refit", quiet=quiet):
        block_prefix = f"{prefix}.{index}."
        names = [n for n, k in ranks.items() if n.startswith(block_prefix) and k is not None]
        for group in _groups_in_order(comp_blocks[index], block_prefix, names, comp_in[0]):
            change.update(_refit_group(original, compressed, orig_blocks[index],
                                       comp_blocks[index], block_prefix, group, batches,
                                       orig_in, comp_in, floor, damping))
        orig_in = [with_hidden(i, run_block(orig_blocks[index], i)) for i in orig_in]
        comp_in = [with_hidden(i, run_block(comp_blocks[index], i)) for i in comp_in]
    return change


def _groups_in_order(block: nn.Module, block_prefix: str, names: list[str],
                     inputs: tuple[tuple, dict]) -> list[list[str]]:
    """Layers of one block grouped by shared input tensor, in the order they run."""
    seen: list[tuple[torch.Tensor, list[str]]] = []

    def group(name: str, call: ModuleCall) -> None:
        for tensor, members in seen:
            if tensor is call.args[0]:
                members.append(name)
                return
        seen.append((call.args[0], [name]))

    modules = {n: block.get_submodule(n[len(block_prefix):]) for n in names}
    with capture_inputs(modules, group):
        run_block(block, inputs)
    return [members for _, members in seen]


def _refit_group(original: nn.Module, compressed: nn.Module, orig_block: nn.Module,
                 comp_block: nn.Module, block_prefix: str, group: list[str],
                 batches: list[TokenBatch],
                 orig_in: list, comp_in: list, floor: float, damping: float
                 ) -> dict[str, float]:
    first = group[0]
    sub = first[len(block_prefix):]  # the layer's name inside its block
    n = compressed.get_submodule(first).in_features
    dev = next(compressed.parameters()).device
    gram = torch.zeros(n, n, dtype=torch.float64, device=dev)
    cross = torch.zeros(n, n, dtype=torch.float64, device=dev)
    state: dict[str, Any] = {}

    def rows(x: torch.Tensor) -> torch.Tensor:
        return masked_rows(x, state["mask"]).float()

    def take_original(_name: str, call: ModuleCall) -> None:
        state["x"] = rows(call.args[0])

    def take_compressed(_name: str, call: ModuleCall) -> None:
        xt = rows(call.args[0])
        gram.add_((xt.T @ xt).double())
        cross.add_((state.pop("x").T @ xt).double())

    # each block pass stops at the layer's input
    with capture_inputs({sub: orig_block.get_submodule(sub)}, take_original, stop=True), \
            capture_inputs({sub: comp_block.get_submodule(sub)}, take_compressed, stop=True):
        for batch, oi, ci in zip(batches, orig_in, comp_in, strict=True):
            state["mask"] = batch.attention_mask
            for block, inputs in ((orig_block, oi), (comp_block, ci)):
                with suppress(StopForward):
                    run_block(block, inputs)
    lam = damping * float(torch.diagonal(gram).mean())
    root = sqrt_gram(gram + lam * torch.eye(n, dtype=gram.dtype, device=dev), floor=floor)
    change = {}
    for name in group:
        layer = compressed.get_submodule(name)
        weight = original.get_submodule(name).weight.detach().to(torch.float64)
        if not isinstance(layer, LowRankLinear):
            continue
        # W' = SVD_k(W C S^-T) S^-1: truncate W* = W C (G~ + lam I)^-1 in the whitened space
        B, A = whitened_svd(_ridge_target(weight, cross, root), root).factors(layer.rank)
        old = layer.dense_weight().detach().to(torch.float64)
        layer.A.copy_(A.to(layer.A.dtype))
        layer.B.copy_(B.to(layer.B.dtype))
        new = layer.dense_weight().detach().to(torch.float64)
        change[name] = float((new - old).norm() / old.norm().clamp_min(1e-300))
    return change


def _ridge_target(weight: torch.Tensor, cross: torch.Tensor, root) -> torch.Tensor:
    """``W C (G~ + lam I)^-1`` through the eigen root ``S`` of ``G~ + lam I``."""
    Q, lam = root.eigenvectors, root.eigenvalues
    return ((weight @ cross) @ Q / lam) @ Q.T
