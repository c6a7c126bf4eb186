"""Real English text from a different domain, offline: the licence texts of installed packages.

Legal prose (copyright notices, permissions, warranty disclaimers) shares almost no
vocabulary or style with the Python documentation used for calibration, so quality measured on
it shows whether a compressed model generalises beyond its calibration domain. The texts come
from the ``*.dist-info`` licence files of the installed distributions (torch alone ships
dozens), cut into passages like the default text and de-duplicated.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata

from .default_text import _chunk, _paragraphs

MAX_FILE_BYTES = 200_000


@lru_cache(maxsize=1)
def _licence_passages() -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    dists = sorted(metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower())
    for dist in dists:
        for file in sorted(dist.files or [], key=str):
            name = file.name.upper()
            if not (name.startswith(("LICENSE", "LICENCE", "COPYING")) or "LICENSE" in name):
                continue
            path = file.locate()
            try:
                if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
                    continue
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            for passage in _chunk(_paragraphs(text)):
                letters = sum(c.isalpha() for c in passage)
                if passage not in seen and letters > 0.6 * len(passage):
                    seen.add(passage)
                    out.append(passage)
    return tuple(out)


def other_domain_passages(limit: int | None = 400) -> list[str]:
    """Up to ``limit`` licence passages (deterministic for a given set of installed packages)."""
    passages = list(_licence_passages())
    return passages[:limit] if limit else passages
