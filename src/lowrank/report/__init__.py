"""Reports of compression runs: ``report.json``, ``report.md`` and PNG plots."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..compress.result import CompressResult
from ..errors import ModelFileError
from ..io.atomic import write_text_atomic
from .markdown import render_markdown


def write_report(directory: str | os.PathLike, report: dict[str, Any],
                 result: CompressResult, plots: bool = True) -> list[str]:
    """Write ``report.json``, the PNG plots (when matplotlib is installed) and ``report.md``."""
    directory = Path(directory)
    images: list[str] = []
    if plots:
        try:
            from .plots import plot_errors, plot_ranks, plot_spectra
        except ImportError:  # matplotlib is an optional extra
            plots = False
    if plots:
        names = [m.name for m in result.modules]
        plot_spectra({m.name: m.spectrum for m in result.modules},
                     {m.name: m.rank for m in result.modules}, directory / "spectra.png",
                     title=f"{result.method['method']} weighted spectra")
        plot_ranks(names, [m.rank for m in result.modules],
                   [m.out_features * m.in_features / (m.out_features + m.in_features)
                    for m in result.modules], directory / "ranks.png")
        images = ["spectra.png", "ranks.png"]
        errors = [m.rel_output_error for m in result.modules]
        if all(e is not None for e in errors):
            plot_errors(names, errors, directory / "errors.png")
            images.append("errors.png")
    report = {**report, "plots": images}
    write_text_atomic(directory / "report.json", json.dumps(report, indent=2))
    write_text_atomic(directory / "report.md", render_markdown(report, images))
    return images


def render_report(directory: str | os.PathLike) -> str:
    """Markdown for an existing output directory, from its ``report.json``."""
    path = Path(directory) / "report.json"
    if not path.is_file():
        raise ModelFileError(f"'{directory}' has no report.json: expected a directory written "
                             "by lowrank compress")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(report, dict):
        raise ModelFileError(f"{path} holds a JSON {type(report).__name__}: expected the "
                             "object that lowrank compress writes")
    plots = report.get("plots", [])
    if not isinstance(plots, list) or not all(isinstance(p, str) for p in plots):
        raise ModelFileError(f"{path}: 'plots' must be a list of file names")
    try:
        return render_markdown(report, plots)
    except KeyError as exc:
        raise ModelFileError(f"{path} is not a lowrank report: it lacks the field "
                             f"{exc}") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{path} is not a lowrank report: {exc}") from exc


__all__ = ["render_markdown", "render_report", "write_report"]
