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
from .result import ModuleReport


@dataclass
class MethodOutcome:
    """What a method did to the targeted modules: one report each, and how it budgeted."""

    reports: list[ModuleReport]
    allocation: dict[str, Any] = field(default_factory=dict)
    keep_target: float | None = None
    params_before: int = 0  # targeted parameters before / after
    params_after: int = 0


@dataclass
class CompressionConfig(ABC):
    """Fields every compression method shares, validation and the JSON round trip.

    Subclasses set ``method`` (registry name) and ``needs`` (statistics they consume:
    ``"gram"``, ``"abs_mean"``, ``"fisher"``), and implement :meth:`apply`, which transforms
    the selected modules of a model in place. Low-rank factorizations derive from
    :class:`lowrank.compress.factorize.FactorizationConfig`, which adds ``keep`` and
    ``alloc``.
    """

    method: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    version: ClassVar[int] = 1

    targets: list[str] | None = field(default=None, metadata={
        "help": "modules to compress: class names, dotted names or 're:' regexes; default: "
                "every linear layer inside the repeated blocks"})
    ignore: list[str] | None = field(default=None, metadata={
        "help": "modules to leave dense, same grammar as targets"})
    seed: int = field(default=0, metadata={"help": "random seed (randomized solvers)"})

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if isinstance(self.ignore, str):
            self.ignore = [self.ignore]
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
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
    def apply(self, model: nn.Module, modules: dict[str, nn.Module],
              stats: CalibrationStats | None) -> MethodOutcome:
        """Transform ``modules`` of ``model`` in place and report each one."""

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"method": self.method, "version": self.version, **data}

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` was."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def output_error(weight: torch.Tensor, approx: torch.Tensor, gram: torch.Tensor) -> float:
    """``||(W - W')X||_F / ||W X||_F`` from the input Gram ``X X^T`` (float64)."""
    delta = weight - approx
    num = torch.einsum("ij,jk,ik->", delta, gram, delta).clamp_min(0)
    den = torch.einsum("ij,jk,ik->", weight, gram, weight).clamp_min(1e-300)
    return float((num / den).sqrt())


def config_from_dict(data: dict[str, Any]) -> CompressionConfig:
    """Rebuild a config from :meth:`CompressionConfig.to_dict` output; unknown keys dropped."""
    from ..registry import get_method

    if not isinstance(data, dict) or "method" not in data:
        raise ConfigError("a method config must be a JSON object with a 'method' key")
    cls = get_method(str(data["method"]))
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
