"""Run the ``lowrank`` CLI in-process for the CLI tests (exit code, stdout, stderr)."""

from __future__ import annotations

import sys

from lowrank.cli.main import main


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["lowrank", *args])
    monkeypatch.delenv("LOWRANK_DEBUG", raising=False)
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
