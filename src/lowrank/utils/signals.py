"""SIGINT and SIGTERM as an exception, so a long run unwinds through its ``finally`` and
``except BaseException`` blocks (temporary output directories are removed on the way out)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Signalled(BaseException):
    """SIGINT or SIGTERM arrived. A ``BaseException``, so ``except Exception`` handlers in
    libraries do not swallow it; the exit status is ``128 + signum`` (130 / 143)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _raise(signum: int, frame: Any) -> None:  # noqa: ARG001 - the signal handler signature
    raise Signalled(signum)


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Signalled` (main thread only; other
    threads cannot set handlers and leave them as they are)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise) for signum in HANDLED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
