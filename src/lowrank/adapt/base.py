"""Shared machinery of the adapters: config base and registry, the wrapper layer, seeds
(module selection and replacement live in :mod:`lowrank.surgery`).

A new adapter is one file in ``adapt/``: an :class:`AdapterConfig` dataclass (with its
``kind`` and :meth:`~AdapterConfig.make_layer`) and its :class:`AdapterLayer`, registered by
the line ``@ADAPTERS.register`` above the config (and imported in ``adapt/__init__``).

Every adapter wraps one frozen base layer (``base_layer``) and adds a trainable update whose
dense form is :meth:`AdapterLayer.delta_weight`. The wrapper keeps the base module's name, so
PEFT file keys are ``base_model.model.<name>.lora_A.weight`` for the same ``<name>``.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import Config
from ..errors import ConfigError, LowRankError
from ..registry import Registry
from ..surgery import LINEAR, LayerKind

#: Adapters by kind (each adapter module registers itself).
ADAPTERS: Registry[type[AdapterConfig]] = Registry("adapter", lambda cls: cls.kind)


@dataclass
class AdapterConfig(Config, ABC):
    """An adapter: the shared fields and versioned dict of :class:`~lowrank.config.Config`
    (under the key ``"kind"``) plus ``rank``. Subclasses set ``kind`` (registry name) and
    implement :meth:`make_layer`; the seed is combined with each module name. ``selects``
    declares the layers it wraps (linear layers; adapters that also wrap convolutions declare
    :data:`~lowrank.surgery.LINEAR_OR_CONV`)."""

    name_key: ClassVar[str] = "kind"
    plugins: ClassVar[Registry[type[AdapterConfig]]] = ADAPTERS
    kind: ClassVar[str] = ""
    selects: ClassVar[LayerKind] = LINEAR

    rank: int = field(default=8, metadata={"help": "adapter rank r"})

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self.rank, "rank")

    @abstractmethod
    def make_layer(self, module: nn.Module, name: str) -> AdapterLayer:
        """Wrap ``module`` (named ``name`` in its model) in this adapter."""


def positive(value: Any, name: str, *, allow_float: bool = False) -> None:
    kinds = (int, float) if allow_float else (int,)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        kind = "a positive number" if allow_float else "a positive integer"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")


def module_seed(seed: int, name: str, tag: str = "") -> int:
    """A 63-bit seed derived from ``(seed, module name, tag)`` by SHA-256 (process independent)."""
    digest = hashlib.sha256(f"{seed}\x00{name}\x00{tag}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, name: str, tag: str = "") -> torch.Generator:
    """A dedicated CPU generator for ``(seed, name, tag)``; the global RNG is never touched."""
    return torch.Generator(device="cpu").manual_seed(module_seed(seed, name, tag))


def checksum(*tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' float32 CPU bytes."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class LoraExport:
    """An exact PEFT LoRA form of one adapter: ``delta = (alpha / r) * B A`` (conv: B ∘ A)."""

    A: torch.Tensor  # [r, in] or [r, in, k...] for conv
    B: torch.Tensor  # [out, r] or [out, r / groups, 1...] for conv
    alpha: float

    @property
    def r(self) -> int:
        return int(self.A.shape[0])


class AdapterLayer(nn.Module):
    """A frozen base layer plus a trainable update ``delta_weight()``; merge/unmerge in fp32."""

    def __init__(self, base: nn.Module, name: str) -> None:
        super().__init__()
        self.base_layer = base
        self.module_name = name
        self.merged = False
        for p in base.parameters():
            p.requires_grad_(False)

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @abstractmethod
    def delta_weight(self) -> torch.Tensor:
        """The dense update of the base weight (same shape), computed in float32."""

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The update's contribution to the output (default: through the dense delta)."""
        delta = self.delta_weight().to(x.dtype)
        base = self.base_layer
        if isinstance(base, nn.Linear):
            return nn.functional.linear(x, delta)
        return base._conv_forward(x, delta, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        return self.base_layer(x) + self.adapter_forward(x)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        w = self.base_layer.weight
        w.copy_((w.float() + self.delta_weight().float()).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        w = self.base_layer.weight
        w.copy_((w.float() - self.delta_weight().float()).to(w.dtype))
        self.merged = False

    def to_lora(self) -> LoraExport:
        """The exact PEFT LoRA form of this adapter; raises when there is none."""
        raise LowRankError(f"{type(self).__name__} on '{self.module_name}' has no exact PEFT "
                           "LoRA form: save it with lowrank.adapt.save (native format)")

    def native_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors the native format stores (default: the trainable parameters)."""
        return {n: p for n, p in self.named_parameters() if not n.startswith("base_layer.")}

    def native_meta(self) -> dict[str, Any]:
        """JSON metadata the native format stores and checks on load (checksums)."""
        return {}

    def check_native_meta(self, meta: dict[str, Any]) -> None:
        """Raise when the saved metadata disagrees with this freshly built layer."""
