"""Export EoRA compensations as a PEFT LoRA adapter (``adapter_config.json`` +
``adapter_model.safetensors``).

Every :class:`~lowrank.nn.ResidualLowRankLinear` computes ``W_c x + b + B (A x)``. A LoRA layer
of PEFT computes ``W x + b + (alpha / r) B (A x)``, so the compensation is a LoRA adapter with
``lora_A = A`` (r x in), ``lora_B = B`` (out x r) and ``lora_alpha = r`` (scaling 1) over a
base model whose targeted linear layers hold the compressed weights ``W_c`` (for example the
dequantized RTN weights). Loaded with ``peft.PeftModel.from_pretrained(base, directory)`` on
such a base it reproduces the EoRA model's outputs. The files are written without importing
PEFT; tensor names follow PEFT's saved layout
``base_model.model.<module name>.lora_A.weight`` / ``.lora_B.weight``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ModelFileError
from ..nn.residual import ResidualLowRankLinear
from .atomic import atomic_directory

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def eora_modules(model: nn.Module) -> dict[str, ResidualLowRankLinear]:
    """The model's compensated layers by name, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, ResidualLowRankLinear)}


def base_model_name(model: nn.Module) -> str | None:
    """Where the model came from: its manifest's base model, else its config's path."""
    base = (getattr(model, "lowrank_manifest", None) or {}).get("base_model") or {}
    name = base.get("path") or base.get("name")
    if not name:
        name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if name else None


def _task_type(model: nn.Module) -> str | None:
    return "CAUSAL_LM" if type(model).__name__.endswith("ForCausalLM") else None


def adapter_config(model: nn.Module, base_model_name_or_path: str | None = None
                   ) -> dict[str, Any]:
    """The ``adapter_config.json`` content for the model's compensations (scaling 1)."""
    layers = eora_modules(model)
    if not layers:
        raise ModelFileError("the model has no EoRA compensation (ResidualLowRankLinear) to "
                             "export: compress it with lowrank.EoRA first")
    ranks = {name: m.rank for name, m in layers.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {name: k for name, k in ranks.items() if k != r}
    return lora_adapter_config(model, list(layers), r, r, pattern, dict(pattern),
                               base_model_name_or_path)  # alpha = r: scaling 1 everywhere


def lora_adapter_config(model: nn.Module, target_modules: list[str], r: int, alpha: float,
                        rank_pattern: dict[str, int], alpha_pattern: dict[str, float],
                        base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """A PEFT LoRA ``adapter_config.json`` (plain LoRA, no dropout, rslora or DoRA)."""
    return {
        "peft_type": "LORA",
        "task_type": _task_type(model),
        "base_model_name_or_path": base_model_name_or_path or base_model_name(model),
        "r": r,
        "lora_alpha": alpha,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "target_modules": target_modules,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": None,
    }


def adapter_state_dict(model: nn.Module) -> dict[str, Any]:
    """``{"base_model.model.<name>.lora_A.weight": A, "...lora_B.weight": B}`` (copies)."""
    tensors = {}
    for name, layer in eora_modules(model).items():
        prefix = f"base_model.model.{name}"
        tensors[f"{prefix}.lora_A.weight"] = layer.A.detach().cpu().contiguous().clone()
        tensors[f"{prefix}.lora_B.weight"] = layer.B.detach().cpu().contiguous().clone()
    return tensors


def save_eora_adapter(model: nn.Module, directory: str | os.PathLike,
                      base_model_name_or_path: str | None = None, *,
                      overwrite: bool = False) -> Path:
    """Write the model's EoRA compensations as a PEFT LoRA adapter into ``directory``.

    ``directory`` is replaced atomically (a crash leaves the old one or none); it may
    replace a previous lowrank output, another non-empty directory only with ``overwrite``.
    Apply the
    adapter to a model whose targeted layers hold the compressed weights ``W_c``
    (``dense_weight_of(layer.base)`` of each ``ResidualLowRankLinear``), e.g.
    ``peft.PeftModel.from_pretrained(base, directory)``. ``base_model_name_or_path`` defaults
    to the model's recorded base model.
    Raises :class:`ModelFileError` when the model has no compensated layer.
    """
    from safetensors.torch import save_file

    config = adapter_config(model, base_model_name_or_path)
    tensors = adapter_state_dict(model)
    with atomic_directory(directory, overwrite=overwrite, kind="adapter") as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return Path(directory)
