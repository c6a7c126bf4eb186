"""Closed-form refit of the left factor ``B`` of factorized layers (SVD-LLM's parameter update).

With ``A`` fixed, ``B = argmin sum_t ||W x_t - B A x~_t||^2``, where ``x_t`` is the layer's
input in the original model and ``x~_t`` its input in the compressed model on the same token.
The normal equations need only ``H = sum z z^T`` (k x k, ``z = A x~``) and
``C = sum (W x) z^T`` (out x k). Layers are refitted in execution order, one group of modules
that share an input at a time, each from a paired pass in which every earlier group is already
refitted (the layer-by-layer update of SVD-LLM's first version), so every ``B`` is the
least-squares fit for the inputs it will actually receive. Each paired pass stops as soon as
the group has seen its inputs. When ``x~ = x`` (the first layer) the whitened truncation is
already optimal and the refit changes nothing beyond the damping.
"""

from __future__ import annotations

from contextlib import suppress

import torch
from torch import nn

from ..calib.data import TokenBatch, TokenizedText, masked_rows
from ..calib.stats import shared_input_sites
from ..nn import LowRankLinear
from ..surgery import ModuleCall, StopForward, capture_inputs
from ..utils.progress import progress


def execution_groups(model: nn.Module, names: list[str], probe: TokenBatch) -> list[list[str]]:
    """``names`` grouped by shared input tensor, groups in the order they first run."""
    modules = {n: model.get_submodule(n) for n in names}
    sites = shared_input_sites(model, modules, probe)
    order: list[str] = []

    def note(name: str, _call: ModuleCall) -> None:
        if name not in order:
            order.append(name)

    with capture_inputs(modules, note), torch.no_grad():
        model(input_ids=probe.input_ids, attention_mask=probe.attention_mask)
    groups: dict[str, list[str]] = {}
    for name in order:
        groups.setdefault(sites[name], []).append(name)
    return list(groups.values())


@torch.no_grad()
def refit_left_factors(
    original: nn.Module,
    compressed: nn.Module,
    names: list[str],
    tokens: TokenizedText,
    batch_size: int = 16,
    damping: float = 1e-6,
    quiet: bool = True,
) -> dict[str, float]:
    """Refit ``B`` of each named :class:`LowRankLinear`; return the relative change of ``B``."""
    layers = {n: compressed.get_submodule(n) for n in names}
    if not all(isinstance(m, LowRankLinear) for m in layers.values()):
        raise TypeError("refit_left_factors expects LowRankLinear modules in the compressed model")
    device = next(compressed.parameters()).device
    batches = [b.to(device) for b in tokens.batches(batch_size)]
    change: dict[str, float] = {}
    for group in progress(execution_groups(compressed, names, batches[0]), "refit", quiet=quiet):
        H, C = _paired_moments(original, compressed, group, batches)
        for name in group:
            layer, h = layers[name], H[name]
            lam = damping * float(torch.trace(h)) / h.shape[0] + 1e-300
            eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
            B = torch.linalg.solve(h + lam * eye, C[name].T).T
            old = layer.B.detach().to(torch.float64)
            change[name] = float((B - old).norm() / old.norm().clamp_min(1e-300))
            layer.B.copy_(B.to(layer.B.dtype))
    return change


def _paired_moments(original: nn.Module, compressed: nn.Module, group: list[str],
                    batches: list[TokenBatch]) -> tuple[dict, dict]:
    """``H = sum z z^T`` and ``C = sum (W x) z^T`` for one group, over all batches."""
    layers = {n: compressed.get_submodule(n) for n in group}
    weights = {n: original.get_submodule(n).weight.detach().to(torch.float64) for n in group}
    H = {n: torch.zeros(m.rank, m.rank, dtype=torch.float64, device=m.A.device)
         for n, m in layers.items()}
    C = {n: torch.zeros(m.out_features, m.rank, dtype=torch.float64, device=m.A.device)
         for n, m in layers.items()}
    state: dict = {}

    def rows(x: torch.Tensor) -> torch.Tensor:
        return masked_rows(x, state["mask"]).to(torch.float64)

    def capture_original(_name: str, call: ModuleCall) -> None:
        state["x"] = rows(call.args[0])

    def accumulate(_name: str, call: ModuleCall) -> None:
        z = rows(call.args[0])
        for name in group:
            zk = z @ layers[name].A.detach().to(torch.float64).T
            H[name] += zk.T @ zk
            C[name] += (state["x"] @ weights[name].T).T @ zk

    first = group[0]  # each pass stops once the group has its inputs
    with capture_inputs({first: original.get_submodule(first)}, capture_original, stop=True), \
            capture_inputs({first: layers[first]}, accumulate, stop=True):
        for batch in batches:
            state["mask"] = batch.attention_mask
            for model in (original, compressed):
                with suppress(StopForward):
                    model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return H, C
