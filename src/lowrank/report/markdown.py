"""``report.md``: the measured result of a compression run, for people."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render_markdown(report: dict[str, Any], images: list[str]) -> str:
    """Markdown with the summary, quality before/after, per-module table and the plots."""
    r = report["result"]
    lines = [
        f"# lowrank compress: {report['model']}",
        "",
        f"Method **{report['method']}**, allocator **{report['alloc']}**, tag "
        f"`{report['tag']}`.",
        "",
        "| quantity | before | after |",
        "| --- | --- | --- |",
        f"| whole-model parameters | {report['params_before']:,} | {report['params_after']:,} |",
        f"| targeted parameters | {report['targeted_params_before']:,} | "
        f"{report['targeted_params_after']:,} |",
        f"| bytes | {report['bytes_before']:,} | {report['bytes_after']:,} "
        f"(ratio {report['bytes_after'] / max(report['bytes_before'], 1):.4f}) |",
        f"| keep (targeted) | 1 | {report['keep_actual']:.4f} (target {report['keep_target']}, "
        f"compression ratio {report['compression_ratio']:.4f}) |",
    ]
    for key in report["quality_before"]:
        lines.append(f"| {key} | {_fmt(report['quality_before'][key])} | "
                     f"{_fmt(report['quality_after'].get(key))} |")
    overlap = report.get("evaluation_overlap") or 0
    lines += ["", "Quality is measured on held-out text against the original model "
              "(cosine / 10-NN overlap of mean-pooled sentence embeddings for encoders, "
              "perplexity for causal LMs)."
              + (f" **Warning: {overlap} evaluation passages are also calibration passages,** "
                 "so the quality after compression is not fully held out." if overlap else ""),
              "",
              "## Timings (seconds)", "",
              " · ".join(f"{k} {v:.2f}" for k, v in r["timings"].items())
              + f" · whole run (load, evaluate, save included) {report['seconds']}", "",
              "## Modules", "",
              "| module | shape | rank | params after | rel. output error | energy kept |",
              "| --- | --- | --- | --- | --- | --- |"]
    for m in r["modules"]:
        err = "n/a" if m["rel_output_error"] is None else f"{m['rel_output_error']:.4f}"
        rank = "dense" if m["rank"] is None else str(m["rank"])
        lines.append(f"| {m['name']} | {m['out_features']}x{m['in_features']} | {rank} | "
                     f"{m['params_after']:,} | {err} | {m['energy_kept']:.4f} |")
    if images:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in images]
    env = report.get("environment", {})
    lines += ["", f"lowrank {env.get('lowrank')}, torch {env.get('torch')}, transformers "
              f"{env.get('transformers')}, {env.get('threads')} threads, seed "
              f"{r['method'].get('seed')}.", ""]
    return "\n".join(lines)
