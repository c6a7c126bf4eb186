"""File formats: the ``lowrank`` checkpoint directory (safetensors + manifest, ``checkpoint``),
output directories that appear whole and never replace a user's files (``atomic``), and EoRA
compensations as a PEFT LoRA adapter (:func:`lowrank.io.peft.save_eora_adapter`).
"""

from .checkpoint import load, save
from .peft import save_eora_adapter

__all__ = ["load", "save", "save_eora_adapter"]
