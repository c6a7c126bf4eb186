"""Evaluation against the original model: embedding agreement of encoders and vision models
(``embedding``), perplexity of causal LMs (``perplexity``), forward latency (``latency``), and
:class:`Evaluator`, one entry point for every kind."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..calib.data import TokenizedText
from ..errors import LowRankError
from .embedding import embed, embed_images, embedding_agreement, knn_overlap
from .latency import forward_latency
from .perplexity import perplexity

if TYPE_CHECKING:
    from ..data.images import Images


class Evaluator:
    """Measure a model against the original on fixed held-out tokens.

    For encoders the reference embeddings of the original model are computed once
    (:meth:`reference`); quality is ``cosine`` and ``knn10_overlap`` against them. For causal
    LMs quality is ``perplexity``. For vision models (``kind="vision"``, ``tokens`` are
    :class:`~lowrank.data.images.Images`) the embeddings are the flattened pooled outputs, with
    the same ``cosine`` and ``knn10_overlap``. Latency is the median forward time of one fixed
    batch.

    A quality metric that is not a finite number (the model's outputs hold NaN or inf, e.g.
    from corrupt or overflowing weights) raises :class:`~lowrank.errors.LowRankError` naming
    the metric, rather than being returned as NaN (which is not valid JSON).
    """

    def __init__(self, kind: str, tokens: TokenizedText | Images, latency_batch: int = 8
                 ) -> None:
        self.kind = kind
        self.tokens = tokens
        self.latency_batch = next(tokens.batches(latency_batch))
        self.reference_embeddings: torch.Tensor | None = None

    def _embed(self, model: nn.Module) -> torch.Tensor:
        if self.kind == "vision":
            return embed_images(model, self.tokens)
        return embed(model, self.tokens)

    def reference(self, model: nn.Module) -> dict[str, Any]:
        if self.kind in ("encoder", "vision"):
            embeddings = self._embed(model)
            if not bool(torch.isfinite(embeddings).all()):
                raise LowRankError("cosine and knn10_overlap cannot be measured: the reference "
                                   "(original) model's outputs contain non-finite values (NaN "
                                   "or inf) on the evaluation data; expected finite outputs")
            self.reference_embeddings = embeddings
        return self._measure(model, latency=True, which="reference (original) model")

    def measure(self, model: nn.Module, latency: bool = True) -> dict[str, Any]:
        return self._measure(model, latency=latency, which="model")

    def _measure(self, model: nn.Module, *, latency: bool, which: str) -> dict[str, Any]:
        if self.kind == "causal-lm":
            quality: dict[str, Any] = {"perplexity": perplexity(model, self.tokens)}
        else:
            if self.reference_embeddings is None:
                raise RuntimeError("call reference(original_model) before measure()")
            quality = embedding_agreement(self.reference_embeddings, self._embed(model))
        for metric, value in quality.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise LowRankError(f"{metric} is {value}: the {which}'s outputs contain "
                                   "non-finite values (NaN or inf) on the evaluation data; "
                                   "expected finite outputs (are its weights corrupt or "
                                   "overflowing its dtype?)")
        if latency:
            quality["latency_s"] = forward_latency(model, self.latency_batch)
        return quality


__all__ = [
    "Evaluator",
    "embed",
    "embed_images",
    "embedding_agreement",
    "forward_latency",
    "knn_overlap",
    "perplexity",
]
