"""Post-training low-rank compression methods: one file each, a config dataclass + transform."""

from .afm import AFM
from .asvd import ASVD
from .base import CompressionConfig, MethodOutcome, config_from_dict
from .conv import ConvFactorize
from .cospadi import CoSpaDi
from .eora import EoRA
from .factorize import FactorizationConfig
from .fwsvd import FWSVD
from .lord import LoRD
from .lr2vq import LR2VQ
from .modegpt import MoDeGPT
from .prune import MagnitudePrune
from .quant import RTN
from .svd import SVD
from .svdllm import SVDLLM

__all__ = [
    "ConvFactorize",
    "CoSpaDi",
    "LR2VQ",
    "MoDeGPT",
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
