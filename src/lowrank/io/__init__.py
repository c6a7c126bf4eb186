"""File formats: the ``lowrank`` checkpoint directory (safetensors + manifest, ``checkpoint``),
output directories that appear whole and never replace a user's files (``atomic``), and EoRA
compensations as a PEFT LoRA adapter (:func:`lowrank.io.peft.save_eora_adapter`); large
outputs are sharded safetensors with a Hugging Face index (``shards``).
"""

from .checkpoint import load, save
from .peft import save_eora_adapter
from .shards import INDEX, ShardWriter, stored_tensors

__all__ = ["INDEX", "ShardWriter", "load", "save", "save_eora_adapter", "stored_tensors"]
