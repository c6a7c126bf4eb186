"""What ``lowrank compress`` runs when no method is given, and method configs built from CLI
options.

The defaults are the best training-free configurations measured by
``benchmarks/compress_methods.py`` (text models) and ``benchmarks/cnn_cli.py`` (vision models);
README, "Which method".
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from .compress import CompressionConfig, FactorizationConfig
from .compress.embedding import input_embedding
from .errors import ConfigError

#: What ``lowrank compress`` runs when no method is given: the best training-free configuration
#: measured by ``benchmarks/compress_methods.py`` (README, "Which method"): SVD-LLM whitening,
#: ranks from measured end-to-end sensitivity, with the input-embedding table in the budget
#: (dropped automatically for models whose table is tied to the output layer), its token
#: weights floored with 0.3 of the uniform distribution over the vocabulary so that tokens the
#: calibration text lacks stay represented (measured better out of domain than 0.1 at equal
#: in-domain quality).
DEFAULT_METHOD = "svdllm"
DEFAULT_OPTIONS: dict[str, Any] = {"alloc": "sensitivity", "embeddings": True,
                                   "embedding_floor": 0.3}

#: What ``lowrank compress`` runs on a vision model when no method is given: Tucker-2 of every
#: convolution kernel with per-layer keeps from measured output errors on the calibration
#: images, half of the kernel parameters kept unless --keep says otherwise (training-free, the
#: method's own default keep of 0.1 needs fine-tuning; ``benchmarks/cnn_cli.py`` compares the
#: allocations, CP and keeps).
DEFAULT_VISION_METHOD = "conv"
DEFAULT_VISION_OPTIONS: dict[str, Any] = {"alloc": "output-error", "keep": 0.5}


def make_config(method: str, **options: Any) -> CompressionConfig:
    """Build a method config by registry name from options (``None`` = the method's default).

    An option the method does not have raises :class:`ConfigError` naming it and the
    method's fields (:meth:`CompressionConfig.from_dict`), so a flag is never silently ignored.
    """
    given = {k: v for k, v in options.items() if v is not None}
    return CompressionConfig.from_dict({**given, "method": method})


def default_config(vision: bool, **options: Any) -> CompressionConfig:
    """The configuration ``lowrank compress`` runs without a method: :data:`DEFAULT_METHOD`
    (:data:`DEFAULT_VISION_METHOD` for vision models) with its default options, each replaced
    by a given one (``None`` = not given)."""
    method, defaults = (DEFAULT_VISION_METHOD, DEFAULT_VISION_OPTIONS) if vision \
        else (DEFAULT_METHOD, DEFAULT_OPTIONS)
    given = {k: v for k, v in options.items() if v is not None}
    return make_config(method, **{**defaults, **given})


def fit_default(config: CompressionConfig, model: nn.Module) -> CompressionConfig:
    """The default configuration for ``model``: the input-embedding table leaves the budget
    when it cannot be compressed (:func:`table_compressible`)."""
    if isinstance(config, FactorizationConfig) and config.embeddings \
            and not table_compressible(model):
        return dataclasses.replace(config, embeddings=False)
    return config


def table_compressible(model: nn.Module) -> bool:
    """Whether the input-embedding table is an untied ``nn.Embedding`` (the default
    configuration compresses it only then)."""
    try:
        input_embedding(model)
    except ConfigError:
        return False
    return True


def describe_config(config: CompressionConfig) -> str:
    """``svdllm (alloc=sensitivity, embeddings=True)``: the method and its non-default fields."""
    defaults = type(config)()
    changed = [f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config)
               if f.name not in ("keep", "seed", "keeps")
               and getattr(config, f.name) != getattr(defaults, f.name)]
    return f"{config.method} ({', '.join(changed)})" if changed else config.method
