"""``lowrank inspect``: per-layer weight spectra and a data-free budget preview."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..models.loading import load_model
from ..nn import count_parameters
from ..surgery import select_linears
from ..utils.env import resolve_device

#: Picture formats ``--plot`` writes (matplotlib picks the format from the suffix).
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def inspect_job(
    model: str | None = None,
    *,
    keep: float = 0.8,
    targets: list[str] | None = None,
    plot: str | os.PathLike | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Per-layer spectra, effective and stable ranks, and a budget preview at ``keep``.

    Data-free: uses the weight spectra only. The preview is the uniform allocation of plain
    SVD at ``keep``, with the resulting parameter counts.
    """
    from ..alloc import BudgetItem, Uniform

    if not 0 < keep <= 1:
        raise ConfigError(f"keep must be in (0, 1] (fraction of parameters kept), got {keep}")
    if plot is not None:
        _check_plot_path(plot)
    loaded = load_model(model, device=resolve_device(device or "cpu"))
    modules = select_linears(loaded.model, targets)
    layers, items = [], []
    for name, lin in modules.items():
        s = torch.linalg.svdvals(lin.weight.detach().double())
        p = s / s.sum()
        eff = float(torch.exp(-(p * torch.log(p.clamp_min(1e-300))).sum()))
        stable = float((s ** 2).sum() / s[0] ** 2)
        items.append(BudgetItem(name, lin.out_features, lin.in_features,
                                lin.bias is not None, s))
        layers.append({"name": name, "shape": [lin.out_features, lin.in_features],
                       "effective_rank": round(eff, 2), "stable_rank": round(stable, 2),
                       "break_even_rank": round(items[-1].break_even, 1),
                       "spectrum": [float(v) for v in s]})
    allocation = Uniform().allocate(items, keep)
    for layer in layers:
        layer["preview_rank"] = allocation.ranks[layer["name"]]
    total = count_parameters(loaded.model)
    out = {
        "model": loaded.name, "kind": loaded.kind, "params": total,
        "targeted_params": allocation.params_before,
        "budget_preview": {"keep": keep, "allocator": "uniform",
                           "targeted_params_after": allocation.params_after,
                           "params_after": total - allocation.params_before
                           + allocation.params_after,
                           "keep_actual": round(allocation.keep_actual, 6)},
        "layers": layers,
    }
    if plot is not None:
        from ..report.plots import plot_spectra

        plot_spectra({x["name"]: x["spectrum"] for x in layers},
                     {x["name"]: x["preview_rank"] for x in layers}, plot,
                     title=f"{loaded.name}: weight spectra (preview ranks at keep {keep})")
        out["plot"] = str(plot)
    return out


def _check_plot_path(plot: str | os.PathLike) -> None:
    """A picture path whose suffix matplotlib writes, in an existing writable directory."""
    path = Path(plot)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise ConfigError(f"plot '{plot}' must end with one of {', '.join(PLOT_SUFFIXES)}")
    if path.is_dir():
        raise ConfigError(f"plot '{plot}' is a directory: expected a file path such as "
                          "spectra.png")
    parent = path.absolute().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(f"plot '{plot}': directory '{parent}' does not exist or is not "
                          "writable")
