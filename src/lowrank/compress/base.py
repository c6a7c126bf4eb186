"""The shared base of compression configs: common fields, validation, JSON round trip."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..calib.data import TokenizedText
from ..calib.stats import CalibrationStats
from ..errors import ConfigError
from ..linalg import WhitenedSVD


@dataclass
class CompressionConfig(ABC):
    """Fields every post-training low-rank method shares.

    Subclasses set ``method`` (registry name), ``needs`` (statistics they consume: ``"gram"``,
    ``"abs_mean"``, ``"fisher"``) and implement :meth:`decompose`, which returns the weighted SVD
    of one weight from which factors at any rank follow.
    """

    method: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    version: ClassVar[int] = 1

    keep: float = field(default=0.8, metadata={
        "help": "fraction of the targeted parameters that remain (0 < keep <= 1); keep=0.8 is "
                "what the literature calls a 20% compression ratio"})
    alloc: str = field(default="uniform", metadata={
        "help": "rank allocator: 'uniform' (same keep for every matrix) or 'energy' (same "
                "fraction of weighted spectral energy per matrix, bisected to the budget)"})
    targets: list[str] | None = field(default=None, metadata={
        "help": "modules to compress: class names, dotted names or 're:' regexes; default: "
                "every linear layer inside the repeated blocks"})
    ignore: list[str] | None = field(default=None, metadata={
        "help": "modules to leave dense, same grammar as targets"})
    seed: int = field(default=0, metadata={"help": "random seed (randomized solvers)"})

    def __post_init__(self) -> None:
        from ..registry import allocator_names

        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)):
            raise ConfigError(f"keep must be a number in (0, 1], got {self.keep!r}")
        if not 0 < float(self.keep) <= 1:
            raise ConfigError(
                f"keep must be in (0, 1] (fraction of parameters kept), got {self.keep}")
        self.keep = float(self.keep)
        if self.alloc not in allocator_names():
            raise ConfigError(f"unknown allocator '{self.alloc}': expected one of "
                              f"{', '.join(allocator_names())}")
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if isinstance(self.ignore, str):
            self.ignore = [self.ignore]
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an int, got {self.seed!r}")

    @property
    def requires_data(self) -> bool:
        return bool(self.needs)

    @property
    def refines(self) -> bool:
        """Whether :meth:`refine` runs after the factors are in place (needs the original)."""
        return False

    def refine(self, original: nn.Module, model: nn.Module, names: list[str],
               tokens: TokenizedText) -> dict[str, float]:
        """Optional second stage on the compressed model; returns a per-module measure."""
        return {}

    @abstractmethod
    def decompose(self, weight: torch.Tensor, name: str,
                  stats: CalibrationStats | None) -> WhitenedSVD:
        """Weighted SVD of ``weight`` (out x in, float64) for module ``name``."""

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"method": self.method, "version": self.version, **data}

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def config_from_dict(data: dict[str, Any]) -> CompressionConfig:
    """Rebuild a config from :meth:`CompressionConfig.to_dict` output; unknown keys dropped."""
    from ..registry import get_method

    if not isinstance(data, dict) or "method" not in data:
        raise ConfigError("a method config must be a JSON object with a 'method' key")
    cls = get_method(str(data["method"]))
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
