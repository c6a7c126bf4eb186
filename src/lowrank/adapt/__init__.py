"""Low-rank adapters beyond LoRA, PEFT-compatible files, reversible merging.

>>> import lowrank.adapt as la
>>> la.apply(model, la.NOLA(rank=8, num_basis=1024, targets=["query", "value"]))
>>> ...train la.trainable_parameters(model).values()...
>>> la.save_peft(model, "ad/")   # loads with peft.PeftModel.from_pretrained(base, "ad/")
>>> la.save(model, "native/")    # compact: NOLA coefficients + seed + basis checksum

Methods: :class:`LoRA` (incl. ``init="pissa"``), :class:`NOLA`, :class:`SVFit`,
:class:`FLoRA` (linear and Conv1d/2d/3d), :class:`TLoRA`; merging of task adapters:
:func:`reversible_merge`.
"""

from .api import (
    adapter_layers,
    apply,
    merge,
    num_trainable,
    trainable_parameters,
    unmerge,
)
from .base import ADAPTERS, AdapterConfig, AdapterLayer, LoraExport
from .files import load, load_peft, save, save_peft
from .flora import FLoRA, FLoRALayer
from .lora import LoRA, LoRALinear
from .nola import NOLA, NOLALinear, nola_basis
from .rmm import ReversibleMerge, lora_factors, reversible_merge
from .svfit import SVFit, SVFitLinear
from .tlora import TLoRA, TLoRALinear

__all__ = [
    "ADAPTERS",
    "FLoRA",
    "NOLA",
    "TLoRA",
    "AdapterConfig",
    "AdapterLayer",
    "FLoRALayer",
    "LoRA",
    "LoRALinear",
    "LoraExport",
    "NOLALinear",
    "ReversibleMerge",
    "SVFit",
    "SVFitLinear",
    "TLoRALinear",
    "adapter_layers",
    "apply",
    "load",
    "load_peft",
    "lora_factors",
    "merge",
    "nola_basis",
    "num_trainable",
    "reversible_merge",
    "save",
    "save_peft",
    "trainable_parameters",
    "unmerge",
]
