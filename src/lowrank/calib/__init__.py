"""Calibration: text to fixed-length token batches, and additive statistics from hooks."""

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
