"""SVD-LLM: truncation-aware whitening (Wang et al., "SVD-LLM: Truncation-aware Singular Value
Decomposition for Large Language Model Compression", ICLR 2025)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..calib.data import TokenizedText
from ..calib.stats import CalibrationStats
from ..errors import ConfigError
from ..linalg import WhitenedSVD, whitened_svd
from .base import METHODS
from .factorize import FactorizationConfig
from .refit import refit_left_factors
from .sequential import sequential_refit


@METHODS.register
@dataclass
class SVDLLM(FactorizationConfig):
    """Truncate in the whitened space of the inputs: ``W' = SVD_k(W S) S^-1`` with ``S S^T = G``.

    ``G`` is the calibration input Gram, so the truncation minimises the output error
    ``||(W - W') X||_F`` exactly; the dropped squared singular values of ``W S`` are the squared
    output error. ``S`` comes from an eigendecomposition with an eigenvalue floor (as in
    SVD-LLM V2), so rank-deficient Grams need no Cholesky retries.

    ``update_left=True`` adds the paper's closed-form update of the left factor: with ``A``
    fixed, ``B`` is refitted by least squares so that the layer, fed by the already-compressed
    upstream model, reproduces the original layer's outputs on the calibration data.

    ``mode="sequential"`` refits both factors block by block instead: ranks are allocated on the
    original statistics, then each layer's factors solve the (ridge) reduced-rank regression
    from its inputs in the compressed model to the original layer's outputs on the original
    inputs (see ``compress/sequential.py``). ``seq_damping`` is the ridge term relative to the
    mean input energy; it keeps the refit from overfitting the calibration passages.
    """

    method: ClassVar[str] = "svdllm"
    statistics: ClassVar[frozenset[str]] = frozenset({"gram"})

    floor: float = field(default=1e-6, metadata={
        "help": "eigenvalue floor of the Gram, relative to its largest eigenvalue"})
    update_left: bool = field(default=False, metadata={
        "help": "refit the left factor in closed form on inputs from the compressed model"})
    mode: str = field(default="original", metadata={
        "help": "'original' (statistics of the uncompressed model) or 'sequential' "
                "(refit block by block on inputs from the compressed upstream model)"})
    seq_damping: float = field(default=1e-2, metadata={
        "help": "ridge damping of the sequential refit, relative to the mean input energy"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.floor < 1:
            raise ConfigError(f"floor must be in (0, 1), got {self.floor}")
        if self.mode not in ("original", "sequential"):
            raise ConfigError(f"mode must be 'original' or 'sequential', got {self.mode!r}")
        if self.mode == "sequential" and self.update_left:
            raise ConfigError("update_left and mode='sequential' are alternatives: the "
                              "sequential refit already fits both factors")
        if not 0 <= self.seq_damping < 10:
            raise ConfigError(f"seq_damping must be in [0, 10), got {self.seq_damping}")

    @property
    def refines(self) -> bool:
        return self.update_left or self.mode == "sequential"

    def refine(self, original: nn.Module, model: nn.Module, names: list[str],
               tokens: TokenizedText) -> dict[str, float]:
        """Sequential reduced-rank refit, or the closed-form left-factor update."""
        if self.mode == "sequential":
            ranks = {n: model.get_submodule(n).rank for n in names}
            return sequential_refit(original, model, ranks, tokens, floor=self.floor,
                                    damping=self.seq_damping)
        return refit_left_factors(original, model, names, tokens)

    def decompose(self, weight: torch.Tensor, name: str,
                  stats: CalibrationStats | None) -> WhitenedSVD:
        root = stats.gram_root(name, self.floor)
        return whitened_svd(weight, root)
