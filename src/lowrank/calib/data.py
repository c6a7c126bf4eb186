"""Calibration and evaluation text: read it, cut it into passages, tokenise to fixed length."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.default_text import Split, _chunk, _paragraphs, default_passages
from ..errors import DataError

TextSource = str | os.PathLike | Sequence[str] | None

#: Fewest passages a compression run calibrates on, and fewest it evaluates on (neighbour
#: overlap and mean cosine over fewer are noise); fewer are refused, never silently reused.
MIN_CALIBRATION_PASSAGES = 8
MIN_EVALUATION_PASSAGES = 8
#: Control characters other than whitespace: never text, dropped when a file is read.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def read_texts(source: TextSource, split: Split = "calibration") -> list[str]:
    """Passages from a list of strings, a UTF-8 text file, the embedded default (``None`` or
    ``"default"``), or ``"licenses"`` (licence texts of the installed packages: real text of
    another domain, for out-of-domain evaluation).

    A file is cut into passages at blank lines (long paragraphs into pieces of at most 160
    words). Raises :class:`DataError` when the source is missing, unreadable or empty.
    """
    if source is None or (isinstance(source, str) and source == "default"):
        return default_passages(split)
    if isinstance(source, str) and source == "licenses":
        from ..data.other_domain import other_domain_passages

        return other_domain_passages()
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{split} text '{source}' is not a readable file: expected a "
                            "UTF-8 text file, a list of strings, or 'default'")
        try:
            text = _CONTROL.sub("", path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(
                f"{split} text '{source}' could not be read as UTF-8: {exc}"
            ) from exc
        passages = _chunk(_paragraphs(text)) or [" ".join(text.split())]
        passages = [p for p in passages if p]
        if not passages:
            raise DataError(f"{split} text '{source}' is empty (or holds only control "
                            "characters): expected some text")
        return passages
    if isinstance(source, Sequence):
        bad = [t for t in source if not isinstance(t, str)]
        if bad:
            raise DataError(f"{split} texts must be strings, got {type(bad[0]).__name__}")
        texts = [t for t in source if _CONTROL.sub("", t).strip()]
        if not texts:
            raise DataError(f"{split} texts are empty: expected at least one non-empty string")
        return texts
    raise DataError(
        f"unsupported {split} data of type {type(source).__name__}: expected a list of "
        "strings, a path to a text file, or None for the embedded default"
    )


@dataclass
class TokenBatch:
    """Token ids and the mask of real (non-padding) tokens, both ``(batch, seq_len)``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device))

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


@dataclass
class TokenizedText:
    """Fixed-length tokenised passages (right padded, padding masked)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    texts: list[str]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def batches(self, batch_size: int, trim: bool = True) -> Iterator[TokenBatch]:
        """Consecutive batches; ``trim`` drops trailing all-padding columns (exact, since the
        sequences are right padded)."""
        for i in range(0, len(self), batch_size):
            mask = self.attention_mask[i : i + batch_size]
            width = int(mask.sum(1).max()) if trim else mask.shape[1]
            yield TokenBatch(self.input_ids[i : i + batch_size, :width], mask[:, :width])


def tokenize(
    texts: Sequence[str], tokenizer: Any, seq_len: int = 128, max_samples: int | None = None
) -> TokenizedText:
    """Tokenise up to ``max_samples`` passages, truncated and right-padded to ``seq_len``."""
    if seq_len < 2:
        raise DataError(f"seq_len must be at least 2, got {seq_len}")
    texts = list(texts)[:max_samples] if max_samples else list(texts)
    if not texts:
        raise DataError("no text to tokenise: expected at least one passage")
    encoded = tokenizer(texts, truncation=True, max_length=seq_len, add_special_tokens=True)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    ids = torch.full((len(texts), seq_len), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(texts), seq_len), dtype=torch.long)
    for i, row in enumerate(encoded["input_ids"]):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    real = mask.bool() & ~torch.isin(ids, special)
    keep = real.sum(1) > 0  # passages of special tokens only say nothing about the text
    if not bool(keep.any()):
        raise DataError("the text produced no tokens besides special ones: expected some "
                        "readable text")
    return TokenizedText(ids[keep], mask[keep], [t for t, k in zip(texts, keep, strict=True) if k])


def require_passages(count: int, minimum: int, what: str, source: str,
                     unit: str = "passages") -> None:
    """Refuse ``count`` passages (or images) when fewer than ``minimum``, in one line naming
    the source."""
    if count < minimum:
        more = "images" if unit == "images" else "text (passages are cut at blank lines)"
        real = " with real tokens" if unit == "passages" else ""
        raise DataError(f"{what} needs at least {minimum} {unit}{real}, but {source} gives "
                        f"{count}: give more {more}")


def masked_rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rows ``(tokens, features)`` of activations ``x`` at real (non-padding) positions.

    ``x`` is ``(batch, seq, features)`` as hooks see it; when its leading size does not match
    the mask (a module that reshapes its input), all rows are returned.
    """
    flat = x.reshape(-1, x.shape[-1])
    keep = mask.reshape(-1).bool()
    return flat[keep] if flat.shape[0] == keep.shape[0] else flat


def split_halves(texts: Sequence[str]) -> tuple[list[str], list[str]]:
    """First and second half (by words) of each passage: positive pairs for contrastive loss."""
    first, second = [], []
    for t in texts:
        words = t.split()
        cut = max(1, len(words) // 2)
        first.append(" ".join(words[:cut]))
        second.append(" ".join(words[cut:]) or " ".join(words[:cut]))
    return first, second
