"""Post-training low-rank compression methods: one file each, a config dataclass + transform."""

from .afm import AFM
from .asvd import ASVD
from .base import CompressionConfig, MethodOutcome, config_from_dict
from .eora import EoRA
from .factorize import FactorizationConfig
from .fwsvd import FWSVD
from .lord import LoRD
from .prune import MagnitudePrune
from .quant import RTN
from .svd import SVD
from .svdllm import SVDLLM

__all__ = [
    "AFM",
    "LoRD",
    "ASVD",
    "EoRA",
    "FWSVD",
    "MagnitudePrune",
    "RTN",
    "SVD",
    "SVDLLM",
    "CompressionConfig",
    "FactorizationConfig",
    "MethodOutcome",
    "config_from_dict",
]
