"""lowrank: low-rank structure in PyTorch models, one API.

>>> import lowrank as lr
>>> result = lr.compress(model, lr.SVDLLM(keep=0.8), data=texts, tokenizer=tok)
>>> lr.save(model, "out/"); model = lr.load("out/")
"""

from . import adapt, optim
from .alloc import ALLOCATORS
from .api import calibrate, compress, to_dense
from .calib import CalibrationStats
from .compress import (
    AFM,
    ASVD,
    FWSVD,
    LR2VQ,
    METHODS,
    RTN,
    SVD,
    SVDLLM,
    CompressionConfig,
    ConvFactorize,
    CoSpaDi,
    EoRA,
    LoRD,
    MagnitudePrune,
    MoDeGPT,
)
from .compress.result import CompressResult, ModuleReport
from .errors import LowRankError
from .io import load, save
from .nn import LowRankLinear
from .utils.lazy import lazy_attributes
from .version import __version__

__all__ = [
    "AFM",
    "ALLOCATORS",
    "METHODS",
    "LR2VQ",
    "ConvFactorize",
    "CoSpaDi",
    "MoDeGPT",
    "adapt",
    "optim",
    "matrix",
    "science",
    "tensor",
    "LoRD",
    "ASVD",
    "FWSVD",
    "RTN",
    "SVD",
    "SVDLLM",
    "EoRA",
    "MagnitudePrune",
    "CalibrationStats",
    "CompressResult",
    "CompressionConfig",
    "LowRankError",
    "LowRankLinear",
    "ModuleReport",
    "__version__",
    "calibrate",
    "compress",
    "load",
    "save",
    "to_dense",
]

# the numeric subpackages load on first access (PEP 562), so ``import lowrank`` stays light
__getattr__ = lazy_attributes(__name__, {"matrix": ".matrix", "science": ".science",
                                         "tensor": ".tensor"})
