"""Read what a model declares in its ``config.json`` without loading any weights: cheap
enough to validate options (sequence length, ...) before the heavy work starts."""

from __future__ import annotations

import os
from typing import Any

#: Config fields that bound the sequence length, in the order transformers' models use them.
POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx")


def read_config(name_or_path: str | os.PathLike | None) -> Any | None:
    """The transformers config of a model directory or cached hub id (``None``: the embedded
    default), read from local files only; ``None`` when it cannot be read (the loader then
    says why)."""
    try:
        import transformers

        from .loading import default_model_path

        path = default_model_path() if name_or_path is None else name_or_path
        return transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception:  # noqa: BLE001 - unreadable here; load_model reports the cause
        return None


def model_positions(name_or_path: str | os.PathLike | None) -> int | None:
    """The most tokens per sequence the model's config allows (``None`` when the config
    cannot be read or declares no bound)."""
    config = read_config(name_or_path)
    for field in POSITION_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
