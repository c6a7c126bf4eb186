"""File formats: the ``lowrank`` checkpoint directory (safetensors + manifest)."""

from .checkpoint import load, save

__all__ = ["load", "save"]
