"""CoSpaDi: calibration-guided sparse dictionary learning ("CoSpaDi: Compressing LLMs via
Calibration-Guided Sparse Dictionary Learning", MTS AI, arXiv 2509.22075).

Each weight ``W`` (out x in) becomes ``C D`` with a dense dictionary ``D`` (k x in) and a
coefficient matrix ``C`` (out x k) holding exactly ``s`` nonzeros per row: each output neuron
combines ``s`` of ``k`` atoms (a union of subspaces, where a low-rank factor is one subspace).
The fit is calibration-aware: with the input Gram ``G = S S^T``,
``||(W - C D) X||_F = ||S^T W^T - (S^T D^T) C^T||_F``, so K-SVD + OMP learn ``D~`` and ``C`` on
the whitened signals ``T = (W S)^T`` (its ``out`` columns, ``in``-dimensional) and the
dictionary maps back as ``D = D~^T S^{-1}``. ``S`` is the floored eigen-root of the Gram
(:func:`lowrank.linalg.sqrt_gram`), so no Cholesky is needed.

Budget (per matrix, in parameters of the layer's dtype): ``k * in + s * out`` values plus the
stored atom indices, ``s * out`` of 8 bits (``k <= 256``) or 16 bits, converted to values and
rounded up. With ``k / s = ratio`` fixed (2 by default, the best ratio in COMPOT's ablation),
the largest ``k`` that fits ``keep`` is used; a matrix where no dictionary saves stays dense.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..linalg.omp import ksvd
from ..nn.sparse_dict import SparseDictLinear, index_bits
from ..surgery import replace_module
from ..utils.progress import progress
from .base import (
    METHODS,
    Calibration,
    CompressionConfig,
    MethodOutcome,
    output_error,
)
from .result import ModuleReport


def dictionary_cost(out_features: int, in_features: int, num_atoms: int, sparsity: int,
                    value_bits: int = 32) -> int:
    """Values + index storage (in ``value_bits`` values, rounded up) of a sparse dictionary."""
    idx = math.ceil(out_features * sparsity * index_bits(num_atoms) / value_bits)
    return num_atoms * in_features + out_features * sparsity + idx


def dictionary_shape(out_features: int, in_features: int, keep: float, ratio: float,
                     value_bits: int = 32, max_atoms: int | None = None, bias: bool = False
                     ) -> tuple[int, int] | None:
    """Largest ``(k, s)`` with ``s = ceil(k / ratio)`` within ``keep`` of the dense layer's
    parameters (a bias is kept as is); None if none fits."""
    extra = out_features if bias else 0
    budget = keep * (out_features * in_features + extra) - extra
    limit = max_atoms or 2 * min(out_features, in_features)
    best = None
    for k in range(1, limit + 1):
        s = min(k, max(1, math.ceil(k / ratio)))
        if dictionary_cost(out_features, in_features, k, s, value_bits) <= budget:
            best = (k, s)
    return best


@METHODS.register
@dataclass
class CoSpaDi(CompressionConfig):
    """Whitened K-SVD sparse dictionaries per matrix (see module docstring)."""

    method: ClassVar[str] = "cospadi"
    statistics: ClassVar[frozenset[str]] = frozenset({"gram"})
    block_local: ClassVar[bool] = True

    keep: float = field(default=0.8, metadata={
        "help": "fraction of each targeted matrix's parameters that remain, index storage "
                "included (0 < keep <= 1)"})
    ratio: float = field(default=2.0, metadata={
        "help": "atoms per nonzero, k / s (>= 1); 1 makes the coefficients dense"})
    iters: int = field(default=3, metadata={"help": "K-SVD iterations (>= 0)"})
    floor: float = field(default=1e-6, metadata={
        "help": "eigenvalue floor of the Gram, relative to its largest eigenvalue"})
    max_atoms: int | None = field(default=None, metadata={
        "help": "upper bound on the dictionary size k (default: 2 x min(out, in))"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)) \
                or not 0 < float(self.keep) <= 1:
            raise ConfigError(f"keep must be a number in (0, 1], got {self.keep!r}")
        self.keep = float(self.keep)
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) \
                or self.ratio < 1:
            raise ConfigError(f"ratio (atoms per nonzero, k/s) must be >= 1, got {self.ratio!r}")
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 0:
            raise ConfigError(f"iters must be a non-negative int, got {self.iters!r}")
        if not 0 < self.floor < 1:
            raise ConfigError(f"floor must be in (0, 1), got {self.floor}")
        if self.max_atoms is not None and (isinstance(self.max_atoms, bool)
                                           or not isinstance(self.max_atoms, int)
                                           or self.max_atoms < 1):
            raise ConfigError(f"max_atoms must be a positive int or None, got {self.max_atoms!r}")

    def fit(self, weight: torch.Tensor, root, num_atoms: int, sparsity: int):
        """Learn the whitened dictionary of ``weight`` (out x in); returns (D, indices, values,
        relative whitened error)."""
        target = root.apply(weight.to(torch.float64)).T  # (in, out): whitened signals
        fit = ksvd(target, num_atoms, sparsity, iters=self.iters, seed=self.seed)
        dictionary = root.apply_inverse(fit.dictionary.T)  # (k, in)
        return dictionary, fit.code.support, fit.code.values, fit.rel_error

    def apply(self, model: nn.Module, modules: dict[str, nn.Module],
              calib: Calibration) -> MethodOutcome:
        stats = calib.stats
        if stats is None:
            raise DataError("CoSpaDi learns its dictionaries in the whitened space of the inputs: "
                            "it needs calibration statistics (data=...)")
        reports = []
        total_before = total_after = 0
        for name, lin in progress(list(modules.items()), "cospadi", quiet=True):
            weight = lin.weight.detach().to(torch.float64)
            out_f, in_f = weight.shape
            has_bias = lin.bias is not None
            bits = torch.finfo(lin.weight.dtype).bits
            before = out_f * in_f + (out_f if has_bias else 0)
            shape = None if self.keep >= 1 else dictionary_shape(
                out_f, in_f, self.keep, self.ratio, bits, self.max_atoms, has_bias)
            root = stats.gram_root(name, self.floor)
            gram = stats.site(name).gram.to(weight.device)
            notes = {"gram_eigenvalues_floored": root.num_floored,
                     "gram_condition": root.condition}
            if shape is None:
                after, approx, rank, err = before, weight, None, 0.0
                notes["left_dense"] = "no sparse dictionary fits the budget" if self.keep < 1 \
                    else "keep = 1"
            else:
                k, s = shape
                dictionary, support, values, err = self.fit(weight, root, k, s)
                bias = None if lin.bias is None else lin.bias.detach()
                new = SparseDictLinear.from_parts(dictionary.to(lin.weight.dtype), support,
                                                  values.to(lin.weight.dtype), bias)
                new = new.to(lin.weight.device)
                if not all(torch.isfinite(p).all() for p in new.parameters()):
                    raise DataError(f"CoSpaDi produced non-finite factors for '{name}'; the "
                                    "module was left unchanged")
                approx = new.dense_weight().detach().to(torch.float64)
                after = new.budget_parameters(bits)  # bias included
                rank = k
                notes.update({"num_atoms": k, "sparsity": s, "index_bits": new.index_bits(),
                              "index_bits_min": max(1, math.ceil(math.log2(k))),
                              "whitened_rel_error": err, "bytes_after": new.num_bytes()})
                replace_module(model, name, new)
            total_before += before
            total_after += after
            w_err = float((weight - approx).norm() / weight.norm().clamp_min(1e-300))
            reports.append(ModuleReport(
                name=name, out_features=out_f, in_features=in_f, rank=rank,
                params_before=before, params_after=after,
                rel_output_error=output_error(weight, approx, gram),
                rel_weight_error=w_err, energy_kept=max(0.0, 1.0 - err ** 2), notes=notes))
        allocation = {"keep": self.keep, "ratio": self.ratio,
                      "shapes": {r.name: [r.notes.get("num_atoms"), r.notes.get("sparsity")]
                                 for r in reports}}
        return MethodOutcome(reports, allocation, self.keep, total_before, total_after)
