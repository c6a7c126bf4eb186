"""Post-training low-rank compression methods: one file each, a config dataclass + transform."""

from .asvd import ASVD
from .base import CompressionConfig, MethodOutcome, config_from_dict
from .factorize import FactorizationConfig
from .fwsvd import FWSVD
from .svd import SVD
from .svdllm import SVDLLM

__all__ = [
    "ASVD",
    "FWSVD",
    "SVD",
    "SVDLLM",
    "CompressionConfig",
    "FactorizationConfig",
    "MethodOutcome",
    "config_from_dict",
]
