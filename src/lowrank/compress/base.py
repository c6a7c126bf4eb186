"""The compression-method contract: :class:`CompressionConfig`, the registry :data:`METHODS`,
what a method receives (:class:`Calibration`) and what it returns (:class:`MethodOutcome`).

A method is one file in ``compress/``: a dataclass deriving :class:`CompressionConfig` that
declares its registry name (``method``), the layers it transforms (``selects``: linear layers
by default), the calibration statistics it reads (``statistics``) and implements ``apply``;
the line ``@METHODS.register`` above it (and its import in ``compress/__init__``) makes it
reachable by name: ``lowrank.METHODS.get``, ``lowrank compress --method``, saved manifests.
Factorizations derive from :class:`~lowrank.compress.factorize.FactorizationConfig`, which
adds ``keep`` and a registered rank allocator ``alloc``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..alloc.base import Allocator
from ..calib.data import TokenizedText
from ..calib.distributed import Dist
from ..calib.stats import CalibrationStats
from ..config import Config
from ..errors import ConfigError
from ..registry import Registry
from ..surgery import LINEAR, LayerKind
from .result import ModuleReport


@dataclass
class Calibration:
    """What :func:`lowrank.compress` hands a method's ``apply``: the calibration statistics,
    the tokenised calibration text and calibration images (each ``None`` when not given)."""

    stats: CalibrationStats | None = None
    tokens: TokenizedText | None = None
    images: torch.Tensor | None = None
    #: the process group a factorization spreads its decompositions over (``None``: alone)
    dist: Dist | None = None


@dataclass
class MethodOutcome:
    """What a method did to the targeted modules: one report each, and how it budgeted."""

    reports: list[ModuleReport]
    allocation: dict[str, Any] = field(default_factory=dict)
    keep_target: float | None = None
    params_before: int = 0  # targeted parameters before / after
    params_after: int = 0


#: Compression methods by name (each method module registers itself).
METHODS: Registry[type[CompressionConfig]] = Registry("method", lambda cls: cls.method)


@dataclass
class CompressionConfig(Config, ABC):
    """A compression method: shared fields and JSON round trip (:class:`~lowrank.config.Config`)
    plus the declarations :func:`lowrank.compress` reads (see module docstring).

    ``needs`` is everything ``compress`` must provide: the ``statistics`` (``"gram"``,
    ``"abs_mean"``, ``"fisher"``), ``"text"`` (calibration passages for end-to-end passes:
    the output probe of a sensitivity allocator, refits, MoDeGPT's block importance) and
    ``"images"`` (calibration images: the conv method's output-error allocation).
    """

    name_key: ClassVar[str] = "method"
    plugins: ClassVar[Registry[type[CompressionConfig]]] = METHODS
    method: ClassVar[str] = ""
    selects: ClassVar[LayerKind] = LINEAR
    statistics: ClassVar[frozenset[str]] = frozenset()

    #: ``apply`` on the modules of one block at a time gives what ``apply`` on all of them
    #: gives (nothing is budgeted across blocks), so the layer-wise pipeline
    #: (:mod:`lowrank.compress.layerwise`) may run the method block by block.
    block_local: ClassVar[bool] = False

    @property
    def allocator(self) -> Allocator | None:
        """The registered allocator this configuration spends its budget with, if any."""
        return None

    @property
    def measures_blocks(self) -> bool:
        """Whether :meth:`block_configs` needs each block's measured importance."""
        return False

    def block_configs(self, count: int, importance: list[float] | None
                      ) -> list[CompressionConfig]:
        """The configuration each of ``count`` blocks runs with in the layer-wise pipeline
        (``importance``: one measure per block when :attr:`measures_blocks`)."""
        if not self.block_local:
            raise ConfigError(f"method '{self.method}' spends its budget across the whole "
                              "model and has no layer-wise form: use pipeline='whole'")
        return [self] * count

    @property
    def needs(self) -> frozenset[str]:
        needs = set(self.statistics)
        allocator = self.allocator
        if self.refines or (allocator is not None and allocator.needs_probe):
            needs.add("text")
        return frozenset(needs)

    @property
    def refines(self) -> bool:
        """Whether :meth:`refine` runs after the factors are in place (needs the original)."""
        return False

    def refine(self, original: nn.Module, model: nn.Module, names: list[str],
               tokens: TokenizedText) -> dict[str, float]:
        """Optional second stage on the compressed model; returns a per-module measure."""
        return {}

    @abstractmethod
    def apply(self, model: nn.Module, modules: dict[str, nn.Module],
              calib: Calibration) -> MethodOutcome:
        """Transform ``modules`` of ``model`` (the layers it selects) in place and report
        each one."""


def output_error(weight: torch.Tensor, approx: torch.Tensor, gram: torch.Tensor) -> float:
    """``||(W - W')X||_F / ||W X||_F`` from the input Gram ``X X^T`` (float64)."""
    delta = weight - approx
    num = torch.einsum("ij,jk,ik->", delta, gram, delta).clamp_min(0)
    den = torch.einsum("ij,jk,ik->", weight, gram, weight).clamp_min(1e-300)
    return float((num / den).sqrt())
