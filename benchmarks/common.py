"""Shared plumbing of the benchmark scripts: where results go and how they are written."""

from __future__ import annotations

import json
from pathlib import Path

from lowrank.utils.env import environment

RESULTS = Path(__file__).parent / "results"


def write_results(out: str | Path, payload: dict, table: str) -> None:
    """Write ``out.json`` (payload + environment) and ``out.md`` (table), then print the table."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({**payload, "environment": environment()}, indent=2))
    out.with_suffix(".md").write_text(table)
    print(table)
