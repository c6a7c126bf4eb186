"""lowrank: low-rank structure in PyTorch models, one API.

>>> import lowrank as lr
>>> result = lr.compress(model, lr.SVDLLM(keep=0.8), data=texts, tokenizer=tok)
>>> lr.save(model, "out/"); model = lr.load("out/")

The top level re-exports the compression API (:mod:`lowrank.api`: ``compress``, ``calibrate``,
``to_dense``), the method configs and :data:`METHODS` of :mod:`lowrank.compress`, the
allocators' :data:`ALLOCATORS`, ``save`` / ``load`` and :class:`LowRankLinear`; ``adapt`` and
``optim`` are imported with it; ``tensor``, ``matrix`` and ``science`` load on first use. The
layers and what may import what: README, "Architecture".
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
