"""Calibration: text read, cut into passages and tokenised to fixed length (``data``), and
additive statistics (input Grams and sums, Fisher information) collected with forward hooks in
one pass (``stats``)."""

from .data import TokenBatch, TokenizedText, read_texts, split_halves, tokenize
from .stats import (
    CalibrationStats,
    FisherStats,
    SiteStats,
    collect_fisher,
    collect_statistics,
    shared_input_sites,
)

__all__ = [
    "CalibrationStats",
    "FisherStats",
    "SiteStats",
    "TokenBatch",
    "TokenizedText",
    "collect_fisher",
    "collect_statistics",
    "read_texts",
    "shared_input_sites",
    "split_halves",
    "tokenize",
]
