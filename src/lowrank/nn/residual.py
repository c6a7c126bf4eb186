"""``ResidualLowRankLinear``: a compressed layer plus a low-rank correction, ``W_c x + b + B A x``.

This is the module EoRA produces (``lowrank.compress.eora``): ``base`` is the compressed layer
(a :class:`~lowrank.nn.quantized.QuantizedLinear`, or an ``nn.Linear`` holding a pruned
weight) and ``B @ A`` approximates the compression error ``W - W_c``. The correction is a
LoRA adapter with scaling 1, which :func:`lowrank.io.peft.save_eora_adapter` exports as such.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .accounting import count_parameters
from .kinds import entry_of, is_serialisable, module_kind, register_module_kind
from .manifest import DTYPE, dtype_name, parse_dtype, positive, positive_int
from .protocol import StructuredLinear, dense_weight_of


def _base_entry(base: nn.Module) -> dict[str, Any]:
    if type(base) is nn.Linear:
        return {"kind": "Linear", "in_features": base.in_features,
                "out_features": base.out_features, "bias": base.bias is not None,
                "dtype": dtype_name(base.weight.dtype)}
    if not is_serialisable(base):
        raise TypeError(f"cannot serialise a ResidualLowRankLinear whose base is a "
                        f"{type(base).__name__}: expected nn.Linear or a registered lowrank "
                        f"module kind")
    return entry_of(base)


def _base_from_entry(entry: Any) -> nn.Module:
    if not isinstance(entry, dict):
        raise ValueError("'base' must be an object describing the compressed layer")
    kind = entry.get("kind")
    if kind == "Linear":
        return nn.Linear(positive_int(entry, "in_features"), positive_int(entry, "out_features"),
                         bias=bool(entry.get("bias", True)),
                         dtype=parse_dtype(entry.get("dtype", "float32")))
    cls = module_kind(kind) if isinstance(kind, str) else None
    if cls is None or not issubclass(cls, StructuredLinear) or cls is ResidualLowRankLinear:
        raise ValueError(f"'base' has unknown kind {kind!r}: expected 'Linear' or a lowrank "
                         f"linear module kind such as QuantizedLinear")
    return cls.from_manifest_entry(entry)


@register_module_kind
class ResidualLowRankLinear(StructuredLinear):
    """``y = base(x) + B (A x)``: a compressed linear layer with a rank-``rank`` correction.

    ``base`` computes ``W_c x + b`` (it holds the bias); ``A`` is (rank x in), ``B`` is
    (out x rank). :meth:`dense_weight` is ``W_c + B A``; :meth:`num_parameters` counts the
    base's weights plus ``rank * (in + out)``, :meth:`num_bytes` its stored bytes. ``base`` is
    an ``nn.Linear`` or a linear structured layer (:class:`~lowrank.nn.StructuredLinear`).
    """

    manifest_fields = (positive("rank"), positive("in_features"), positive("out_features"),
                       DTYPE)

    def __init__(self, base: nn.Module, rank: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not isinstance(base, (nn.Linear, StructuredLinear)):
            raise TypeError(f"base must be an nn.Linear or a StructuredLinear with "
                            f"in_features/out_features, got {type(base).__name__}")
        in_features, out_features = base.in_features, base.out_features
        if isinstance(rank, bool) or not isinstance(rank, int) or \
                not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank must be in [1, {min(in_features, out_features)}] for a "
                             f"{out_features}x{in_features} layer, got {rank!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.base = base
        kw = {"device": device, "dtype": dtype}
        self.A = nn.Parameter(torch.zeros(rank, in_features, **kw))
        self.B = nn.Parameter(torch.zeros(out_features, rank, **kw))

    @classmethod
    def from_factors(cls, base: nn.Module, B: torch.Tensor, A: torch.Tensor
                     ) -> ResidualLowRankLinear:
        """Wrap ``base`` with the correction ``B @ A`` (copied, in ``A``'s dtype and device)."""
        if A.ndim != 2 or B.ndim != 2 or B.shape[1] != A.shape[0]:
            raise ValueError(f"factors do not chain: B {tuple(B.shape)} @ A {tuple(A.shape)}")
        if (B.shape[0], A.shape[1]) != (base.out_features, base.in_features):
            raise ValueError(f"factors B {tuple(B.shape)} @ A {tuple(A.shape)} do not match "
                             f"the base layer ({type(base).__name__})")
        layer = cls(base, A.shape[0], device=A.device, dtype=A.dtype)
        with torch.no_grad():
            layer.A.copy_(A)
            layer.B.copy_(B)
        return layer

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        correction = nn.functional.linear(nn.functional.linear(x, self.A), self.B)
        return self.base(x) + correction

    def correction(self) -> torch.Tensor:
        """``B @ A`` (out x in)."""
        return self.B @ self.A

    def dense_weight(self) -> torch.Tensor:
        """The represented weight ``W_c + B A`` (out x in), in ``A``'s dtype."""
        base = dense_weight_of(self.base)
        return (base.double() + self.B.double() @ self.A.double()).to(self.A.dtype)

    def correction_parameters(self) -> int:
        return self.rank * (self.in_features + self.out_features)

    def num_parameters(self) -> int:
        """The base's parameters (weights it encodes, bias) plus ``rank * (in + out)``."""
        return count_parameters(self.base) + self.correction_parameters()

    def flops_per_token(self) -> int:
        base = self.base.flops_per_token() if isinstance(self.base, StructuredLinear) else \
            2 * self.in_features * self.out_features
        return base + 2 * self.correction_parameters()

    def manifest_entry(self) -> dict[str, Any]:
        return {**super().manifest_entry(), "base": _base_entry(self.base)}

    @classmethod
    def from_manifest_entry(cls, entry: dict[str, Any]) -> ResidualLowRankLinear:
        base = _base_from_entry(entry.get("base"))
        in_features = positive_int(entry, "in_features")
        out_features = positive_int(entry, "out_features")
        if (base.in_features, base.out_features) != (in_features, out_features):
            raise ValueError(f"base is {base.out_features}x{base.in_features} but the layer is "
                             f"{out_features}x{in_features}")
        return cls(base, positive_int(entry, "rank"), dtype=DTYPE.decode(entry))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}")
