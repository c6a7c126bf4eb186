"""The embedded default text: CPython's own documentation topics (``pydoc_data.topics``).

It ships with every CPython, so it is there without network access. The topics are cut into
passages of a few sentences, and each passage goes to the calibration part or the held-out
evaluation part by a checksum of its text, so the two parts never overlap and the split does
not depend on the order of the topics.
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache
from typing import Literal

Split = Literal["calibration", "evaluation"]

MIN_WORDS = 48
MAX_WORDS = 160
EVAL_EVERY = 4  # one passage in four (by checksum) is held out for evaluation


def _paragraphs(text: str) -> list[str]:
    parts = re.split(r"\n\s*\n", text)
    cleaned = [" ".join(p.split()) for p in parts]
    return [p for p in cleaned if p]


def _chunk(paragraphs: list[str]) -> list[str]:
    passages: list[str] = []
    words: list[str] = []
    for para in paragraphs:
        words.extend(para.split())
        while len(words) >= MAX_WORDS:
            passages.append(" ".join(words[:MAX_WORDS]))
            words = words[MAX_WORDS:]
        if len(words) >= MIN_WORDS:
            passages.append(" ".join(words))
            words = []
    if len(words) >= MIN_WORDS // 2:
        passages.append(" ".join(words))
    return passages


@lru_cache(maxsize=1)
def _all_passages() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    seen: set[str] = set()
    out: list[str] = []
    for key in sorted(topics):
        for passage in _chunk(_paragraphs(topics[key])):
            if passage not in seen:
                seen.add(passage)
                out.append(passage)
    return tuple(out)


def default_passages(split: Split = "calibration") -> list[str]:
    """Passages of the embedded text for ``split`` ("calibration" or "evaluation")."""
    if split not in ("calibration", "evaluation"):
        raise ValueError(f"split must be 'calibration' or 'evaluation', got {split!r}")
    held_out = split == "evaluation"
    return [
        p
        for p in _all_passages()
        if (zlib.crc32(p.encode("utf-8")) % EVAL_EVERY == 0) == held_out
    ]
