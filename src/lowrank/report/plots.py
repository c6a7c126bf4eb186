"""PNG plots for the report: spectra, chosen ranks, output error per module."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(name: str) -> str:
    parts = name.split(".")
    digits = [p for p in parts if p.isdigit()]
    return ".".join(digits[-1:] + parts[-2:]) if digits else ".".join(parts[-2:])


def plot_spectra(spectra: Mapping[str, Sequence[float]], ranks: Mapping[str, int | None],
                 path: str | os.PathLike, title: str = "Singular-value spectra") -> None:
    """Normalised spectra ``s_i / s_1`` per module (log scale), chosen rank marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    cmap = plt.get_cmap("viridis")
    for i, (name, s) in enumerate(spectra.items()):
        if not s or s[0] <= 0:
            continue
        ys = [v / s[0] for v in s]
        color = cmap(i / max(1, len(spectra) - 1))
        ax.plot(range(1, len(ys) + 1), ys, color=color, lw=0.8, alpha=0.8)
        k = ranks.get(name)
        if k:
            ax.plot([k], [ys[min(k, len(ys)) - 1]], "o", color=color, ms=3)
    ax.set_yscale("log")
    ax.set_xlabel("index i")
    ax.set_ylabel("s_i / s_1")
    ax.set_title(title + " (dots: chosen rank)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ranks(names: Sequence[str], ranks: Sequence[int | None],
               break_even: Sequence[float], path: str | os.PathLike) -> None:
    """Chosen rank per module against its break-even rank (dense modules shown at break-even)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(names)), 4.5))
    xs = range(len(names))
    ax.bar(xs, break_even, color="#dddddd", label="break-even rank mn/(m+n)")
    ax.bar(xs, [r if r is not None else b for r, b in zip(ranks, break_even, strict=True)],
           color=["#3b75af" if r is not None else "#c44e52" for r in ranks],
           label="chosen rank (red: kept dense)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([_short(n) for n in names], rotation=90, fontsize=6)
    ax.set_ylabel("rank")
    ax.legend(fontsize=8)
    ax.set_title("Rank allocation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_errors(names: Sequence[str], errors: Sequence[float], path: str | os.PathLike) -> None:
    """Relative output error ``||(W - W')X|| / ||WX||`` per module on calibration data."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(names)), 4.5))
    ax.bar(range(len(names)), errors, color="#55a868")
    ax.set_xticks(list(range(len(names))))
    ax.set_xticklabels([_short(n) for n in names], rotation=90, fontsize=6)
    ax.set_ylabel("relative output error")
    ax.set_title("Output error per module (calibration data)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
