"""Errors that users can act on.

A :class:`LowRankError` carries a one-line message that names the bad value and says what was
expected; the CLI prints it and exits with status 2 (``LOWRANK_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations


class LowRankError(ValueError):
    """A known, user-facing error (bad input, bad file, unsupported request)."""


class ConfigError(LowRankError):
    """A configuration field holds a value outside its documented range."""


class DataError(LowRankError):
    """Calibration or evaluation data is missing, empty or unreadable."""


class ModelFileError(LowRankError):
    """A model path or a saved ``lowrank`` directory is missing, malformed or inconsistent."""


class TargetError(LowRankError):
    """Module selection (``targets`` / ``ignore``) matched nothing or something unsupported."""


class OutputError(LowRankError):
    """An output path cannot be written safely (a file, a protected or foreign directory, a
    missing or read-only parent)."""
