"""lowrank: low-rank structure in PyTorch models, one API.

>>> import lowrank as lr
>>> result = lr.compress(model, lr.SVDLLM(keep=0.8), data=texts, tokenizer=tok)
>>> lr.save(model, "out/"); model = lr.load("out/")
"""

from . import adapt, optim, recover, structured, tensor
from .api import calibrate, compress, to_dense
from .calib import CalibrationStats
from .compress import (
    AFM,
    ASVD,
    FWSVD,
    LR2VQ,
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
    config_from_dict,
)
from .compress.result import CompressResult, ModuleReport
from .errors import LowRankError
from .io import load, save
from .nn import LowRankLinear
from .registry import allocator_names, get_method, method_names

__version__ = "0.1.0"

__all__ = [
    "AFM",
    "LR2VQ",
    "ConvFactorize",
    "CoSpaDi",
    "MoDeGPT",
    "adapt",
    "optim",
    "recover",
    "structured",
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
    "allocator_names",
    "calibrate",
    "compress",
    "config_from_dict",
    "get_method",
    "load",
    "method_names",
    "save",
    "to_dense",
]
