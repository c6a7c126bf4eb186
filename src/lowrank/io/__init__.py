"""File formats: the ``lowrank`` checkpoint directory (safetensors + manifest).

:func:`lowrank.io.peft.save_eora_adapter` exports EoRA compensations as a PEFT LoRA adapter.
"""

from .checkpoint import load, save
from .peft import save_eora_adapter

__all__ = ["load", "save", "save_eora_adapter"]
