"""Post-training compression methods: one file each, a config dataclass and its transform.

``base.py`` holds the contract (:class:`CompressionConfig`, :class:`Calibration`,
:class:`MethodOutcome`) and the registry :data:`METHODS`; ``factorize.py`` the budgeted
low-rank flow shared by SVD, ASVD, FWSVD, SVD-LLM, LoRD and AFM; every method module registers
itself (``@METHODS.register``) when this package is imported.
"""

from .afm import AFM
from .asvd import ASVD
from .base import METHODS, Calibration, CompressionConfig, MethodOutcome
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
    "AFM",
    "ASVD",
    "FWSVD",
    "LR2VQ",
    "METHODS",
    "RTN",
    "SVD",
    "SVDLLM",
    "Calibration",
    "CompressionConfig",
    "ConvFactorize",
    "CoSpaDi",
    "EoRA",
    "FactorizationConfig",
    "LoRD",
    "MagnitudePrune",
    "MethodOutcome",
    "MoDeGPT",
]
