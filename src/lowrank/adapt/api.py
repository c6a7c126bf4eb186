"""The adapter verbs: apply, merge, unmerge, trainable_parameters, adapter_layers."""

from __future__ import annotations

from torch import nn

from ..errors import LowRankError
from ..surgery import replace_module
from .base import AdapterConfig, AdapterLayer

CONFIG_ATTR = "lowrank_adapter_config"


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """The model's adapter layers by module name, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}


def apply(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Wrap the modules that ``config`` targets in its adapter, in place; returns their names.

    Every parameter of the model is frozen except the adapters' (unfreeze a task head
    yourself). Raises :class:`LowRankError` when the model already carries adapters.
    """
    if not isinstance(config, AdapterConfig):
        raise LowRankError(f"config must be an adapter config (LoRA, NOLA, SVFit, FLoRA, "
                           f"TLoRA), got {type(config).__name__}")
    if adapter_layers(model):
        raise LowRankError("the model already carries adapters: load a fresh base model, or "
                           "merge them and build a new model, before applying another")
    selected = config.selects.select(model, config.targets, config.ignore)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in selected.items():
        replace_module(model, name, config.make_layer(module, name))
    setattr(model, CONFIG_ATTR, config)
    return list(selected)


def _layers_or_raise(model: nn.Module) -> dict[str, AdapterLayer]:
    layers = adapter_layers(model)
    if not layers:
        raise LowRankError("the model carries no adapter: call lowrank.adapt.apply first")
    return layers


def merge(model: nn.Module) -> None:
    """Add every adapter's update into its base weight (fp32 arithmetic); forward unchanged."""
    for layer in _layers_or_raise(model).values():
        layer.merge()


def unmerge(model: nn.Module) -> None:
    """Undo :func:`merge`: the base weights return to their values before the merge."""
    for layer in _layers_or_raise(model).values():
        layer.unmerge()


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapters' trainable parameters by full name (``sum(p.numel() ...)`` counts them)."""
    out: dict[str, nn.Parameter] = {}
    for lname, layer in _layers_or_raise(model).items():
        for pname, p in layer.named_parameters():
            if not pname.startswith("base_layer.") and p.requires_grad:
                out[f"{lname}.{pname}"] = p
    return out


def num_trainable(model: nn.Module) -> int:
    """Total number of trainable adapter parameters."""
    return sum(p.numel() for p in trainable_parameters(model).values())
