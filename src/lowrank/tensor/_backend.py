"""Lazy, scoped access to tensorly: every call runs inside ``backend_context`` so tensorly's
process-global backend is never changed (tltorch sets it to pytorch at import; we do not)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import LowRankError


def tensorly() -> Any:
    """Import tensorly or raise a clear error naming the extra to install."""
    try:
        import tensorly as tl
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise LowRankError("lowrank.tensor delegates dense decompositions to tensorly: "
                           "pip install 'lowrank[tensor]' (or pip install tensorly)") from exc
    return tl


@contextmanager
def scoped(backend: str = "numpy") -> Iterator[Any]:
    """``with scoped('numpy') as tl:`` runs tensorly on ``backend`` in this thread only."""
    tl = tensorly()
    with tl.backend.backend_context(backend, local_threadsafe=True):
        yield tl
