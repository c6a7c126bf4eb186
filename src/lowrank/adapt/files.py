"""Adapter files: PEFT LoRA format (``save_peft`` / ``load_peft``) and the compact native one.

PEFT format: ``adapter_config.json`` (``peft_type: "LORA"``, ``r``, ``lora_alpha``,
``target_modules``, ``rank_pattern`` / ``alpha_pattern`` for modules that differ) and
``adapter_model.safetensors`` with ``base_model.model.<module>.lora_A.weight`` /
``lora_B.weight``, loadable by ``peft.PeftModel.from_pretrained``. Written without importing
PEFT. Native format: the same two file names, ``peft_type: "LOWRANK_<KIND>"``, the config,
per-module metadata (NOLA basis checksums, shapes), and only the compact tensors (NOLA
coefficients, SVFit singular values, FLoRA core and factors, TLoRA factors, LoRA factors).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelFileError, TargetError
from ..io.atomic import atomic_directory
from ..io.peft import base_model_name, lora_adapter_config
from ..surgery import replace_module
from ..version import __version__
from .api import CONFIG_ATTR, _layers_or_raise, adapter_layers, apply
from .base import AdapterConfig
from .lora import LoRA, LoRALinear

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FORMAT_VERSION = 1


def _write(directory: str | os.PathLike, config: dict[str, Any],
           tensors: dict[str, torch.Tensor], overwrite: bool) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    with atomic_directory(directory, overwrite=overwrite, kind="adapter") as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True),
                                          encoding="utf-8")
    return Path(directory)


def _read(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    d = Path(directory)
    cfg, weights = d / ADAPTER_CONFIG, d / ADAPTER_WEIGHTS
    if not cfg.is_file():
        raise ModelFileError(f"'{directory}' has no {ADAPTER_CONFIG}: expected an adapter "
                             "directory written by lowrank.adapt or PEFT")
    if not weights.is_file():
        raise ModelFileError(f"'{directory}' has no {ADAPTER_WEIGHTS} (legacy .bin adapters "
                             "are not read: re-save them with PEFT's safe_serialization)")
    try:
        config = json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{cfg} is not valid JSON: {exc}") from exc
    return config, load_file(str(weights))


def save_peft(model: nn.Module, directory: str | os.PathLike,
              base_model_name_or_path: str | None = None, *, overwrite: bool = False) -> Path:
    """Write the model's adapters as a PEFT LoRA adapter (exact: LoRA, PiSSA as 2r, NOLA,
    SVFit, FLoRA-linear and FLoRA-conv as conv LoRA). Raises for TLoRA (no exact LoRA form).
    ``directory`` may replace a previous lowrank output; another non-empty directory only
    with ``overwrite`` (:func:`lowrank.io.atomic.check_output_dir`).

    Load it on the *original* base model with ``peft.PeftModel.from_pretrained(base, dir)``
    or :func:`load_peft`. Unmerged state is exported whatever ``merged`` says.
    """
    layers = _layers_or_raise(model)
    exports = {name: layer.to_lora() for name, layer in layers.items()}
    pairs = {name: (e.r, e.alpha) for name, e in exports.items()}
    r, alpha = Counter(pairs.values()).most_common(1)[0][0]
    rank_pattern = {n: k for n, (k, _) in pairs.items() if k != r}
    alpha_pattern = {n: a for n, (_, a) in pairs.items() if a != alpha}
    config = lora_adapter_config(model, list(exports), r, alpha, rank_pattern, alpha_pattern,
                                 base_model_name_or_path)
    tensors: dict[str, torch.Tensor] = {}
    for name, e in exports.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = e.A
        tensors[f"base_model.model.{name}.lora_B.weight"] = e.B
    return _write(directory, config, tensors, overwrite)


def _pattern_value(pattern: dict[str, Any], name: str, default: Any) -> Any:
    """PEFT's rule: a key matches a module name equal to it or ending in ``.key``."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?{key}$", name):
            return value
    return default


_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def load_peft(model: nn.Module, directory: str | os.PathLike) -> list[str]:
    """Apply a PEFT LoRA adapter directory (``peft_type`` LORA, linear layers) to ``model``.

    The adapted model computes ``W x + b + (alpha / r) B A x`` exactly as PEFT does (rslora,
    ``rank_pattern`` and ``alpha_pattern`` honoured). DoRA, LoRA biases and conv/embedding
    LoRA are refused with a clear error. Returns the adapted module names.
    """
    config, tensors = _read(directory)
    if config.get("peft_type") != "LORA":
        raise ModelFileError(f"load_peft reads peft_type 'LORA', the file has "
                             f"{config.get('peft_type')!r} (native files: lowrank.adapt.load)")
    if config.get("use_dora"):
        raise ModelFileError("DoRA adapters (use_dora=true) are not supported by load_peft")
    if config.get("fan_in_fan_out"):
        raise ModelFileError("fan_in_fan_out=true (GPT-2 Conv1D) adapters are not supported")
    if adapter_layers(model):
        raise ModelFileError("the model already carries adapters: load into a fresh base")
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise ModelFileError(f"unexpected tensor '{key}' in the adapter: expected "
                                 "base_model.model.<module>.lora_A/lora_B.weight only")
        factors.setdefault(m.group(1), {})[m.group(2)] = value
    named = dict(model.named_modules())
    r0, a0 = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
    rslora = bool(config.get("use_rslora", False))
    for p in model.parameters():
        p.requires_grad_(False)
    for name, ab in factors.items():
        if set(ab) != {"A", "B"}:
            raise ModelFileError(f"module '{name}' has lora_{''.join(ab)} only: expected both")
        base = named.get(name)
        if base is None:
            raise TargetError(f"the adapter targets '{name}', which the model does not have")
        if not isinstance(base, nn.Linear):
            raise TargetError(f"load_peft supports LoRA on nn.Linear; '{name}' is a "
                              f"{type(base).__name__}")
        a, b = ab["A"], ab["B"]
        r = int(_pattern_value(config.get("rank_pattern") or {}, name, r0))
        alpha = float(_pattern_value(config.get("alpha_pattern") or {}, name, a0))
        if a.shape != (r, base.in_features) or b.shape != (base.out_features, r):
            raise ModelFileError(f"'{name}': lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} "
                                 f"do not fit r={r} and the layer {tuple(base.weight.shape)}")
        layer = LoRALinear(base, name, r, alpha, use_rslora=rslora)
        with torch.no_grad():
            layer.lora_A.copy_(a)
            layer.lora_B.copy_(b)
        replace_module(model, name, layer)
    setattr(model, CONFIG_ATTR, LoRA(rank=r0, alpha=a0, use_rslora=rslora,
                                     targets=sorted(factors)))
    return list(factors)


def save(model: nn.Module, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the adapters in the compact native format (bit-exact with :func:`load`);
    ``directory`` follows the rule of :func:`save_peft`."""
    layers = _layers_or_raise(model)
    cfg = getattr(model, CONFIG_ATTR, None)
    if cfg is None:
        raise ModelFileError("the model's adapter config is unknown (was it applied with "
                             "lowrank.adapt.apply?)")
    tensors, modules = {}, {}
    for name, layer in layers.items():
        modules[name] = {"class": type(layer).__name__, **layer.native_meta()}
        for tname, t in layer.native_tensors().items():
            tensors[f"base_model.model.{name}.{tname}"] = t
    config = {
        "peft_type": f"LOWRANK_{cfg.kind.upper()}",
        "format_version": FORMAT_VERSION,
        "toolkit_version": __version__,
        "base_model_name_or_path": base_model_name(model),
        "config": cfg.to_dict(),
        "modules": modules,
    }
    return _write(directory, config, tensors, overwrite)


def load(model: nn.Module, directory: str | os.PathLike) -> list[str]:
    """Apply a native adapter directory (from :func:`save`) to a fresh base ``model``.

    Rebuilds the adapters from the saved config (seeded bases and SVDs are regenerated and
    checked against the stored checksums / singular values), then copies the saved tensors.
    """
    config, tensors = _read(directory)
    kind = str(config.get("peft_type", ""))
    if not kind.startswith("LOWRANK_"):
        raise ModelFileError(f"lowrank.adapt.load reads native files (peft_type LOWRANK_*), "
                             f"got {kind!r}: use load_peft for PEFT adapters")
    if config.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"native adapter format_version {config.get('format_version')!r} "
                             f"is not {FORMAT_VERSION}")
    try:
        cfg = AdapterConfig.from_dict(config["config"])
    except ConfigError as exc:
        raise ModelFileError(f"'{directory}' holds a bad adapter config: {exc}") from exc
    names = apply(model, cfg)
    modules = config.get("modules", {})
    if sorted(names) != sorted(modules):
        raise ModelFileError(f"the file adapts {len(modules)} modules, the config selects "
                             f"{len(names)} in this model: not the same base architecture")
    layers = adapter_layers(model)
    for name in names:
        layer = layers[name]
        layer.check_native_meta(modules[name])
        own = {k: t for k, t in tensors.items() if k.startswith(f"base_model.model.{name}.")}
        own = {k[len(f"base_model.model.{name}."):]: t for k, t in own.items()}
        check = getattr(layer, "check_native_tensors", None)
        if check is not None:
            check(own)
        targets = layer.native_tensors()
        for tname, target in targets.items():
            if tname not in own:
                raise ModelFileError(f"'{directory}' lacks tensor '{tname}' of '{name}'")
            if own[tname].shape != target.shape:
                raise ModelFileError(f"'{name}.{tname}' has shape {tuple(own[tname].shape)}, "
                                     f"the rebuilt adapter expects {tuple(target.shape)}")
            if isinstance(target, nn.Parameter):
                with torch.no_grad():
                    target.copy_(own[tname])
    return names
