"""Stage messages on stderr: shown on a terminal, silent when quiet or redirected."""

from __future__ import annotations

import sys
import time


class StageLog:
    """Print ``[  1.2s] message`` lines to stderr when it is a terminal and not ``quiet``."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet or not sys.stderr.isatty()
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.perf_counter() - self.start
            print(f"[{elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)
