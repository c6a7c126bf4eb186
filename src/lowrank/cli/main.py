"""``lowrank`` command line: thin wrappers over the jobs of :mod:`lowrank.jobs`.

Data goes to stdout (``--json`` prints exactly one JSON object), progress to stderr. A known
error prints one line and exits with status 2; ``LOWRANK_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from typing import Any

import typer

from ..errors import ConfigError, LowRankError
from ..utils.signals import Signalled, signals_raise

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Low-rank structure in PyTorch models: compress, evaluate, inspect.")

MODEL_ARG = typer.Argument(None, help="Hugging Face model directory or cached hub id "
                                      "(default: the embedded all-MiniLM-L6-v2)")


def _emit(obj: dict[str, Any], as_json: bool, human) -> None:
    if as_json:  # allow_nan=False: NaN is not JSON; the jobs refuse non-finite results
        sys.stdout.write(json.dumps(obj, allow_nan=False) + "\n")
    else:
        human(obj)


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


def _q(d: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())


def _number(text: str | None, flag: str) -> int | float | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise LowRankError(f"{flag} expects a number, got '{text}'") from None


def _key_values(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LowRankError(f"--set expects key=value, got '{item}'")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


_UNITS = {"B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
          "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30}


def _size(text: str | None, flag: str) -> int | None:
    """``'5GB'`` / ``'500MB'`` / ``'1048576'`` -> bytes (``None`` stays ``None``)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", text.upper())
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"{flag} must be a positive size such as 5GB, 500MB or 1048576, "
                          f"got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2) or "B"])


@app.command()
def compress(
    model: str | None = MODEL_ARG,
    method: str | None = typer.Option(
        None, help="a registered method (lowrank.METHODS.names()): svd, "
                   "asvd, fwsvd, svdllm, conv, ...; default: the best measured training-free "
                   "configuration, svdllm with alloc=sensitivity and the embedding table in "
                   "the budget (vision models: conv with alloc=output-error at keep 0.5)"),
    keep: float | None = typer.Option(
        None, help="fraction of targeted parameters kept, in (0, 1] (default: the "
                   "method's, 0.8 for the SVD family, 0.1 for conv; 0.5 for the default "
                   "configuration of vision models)"),
    alloc: str | None = typer.Option(
        None, help="a registered allocator (lowrank.ALLOCATORS.names()): uniform (default "
                   "with --method), sensitivity (default without), sensitivity-sqrt, energy, "
                   "welore, svdllm-v2; conv: uniform (data-free) or output-error (per-layer "
                   "keeps measured on the calibration images)"),
    mode: str | None = typer.Option(
        None, help="svdllm: 'original' (default) or 'sequential' (refit block by block on "
                   "inputs from the compressed model)"),
    min_keep: float | None = typer.Option(None, help="per-matrix lower bound on kept fraction"),
    max_keep: float | None = typer.Option(None, help="per-matrix upper bound on kept fraction"),
    rank_align: int | None = typer.Option(None, help="ranks as multiples of this (e.g. 8)"),
    rank: str | None = typer.Option(
        None, help="eora: compensation rank (int, or a float fraction of min(in, out))"),
    base: str | None = typer.Option(
        None, help="eora: compressor to compensate: quant-int4, quant-int8, prune-2:4, "
                   "prune-unstructured, none"),
    option: list[str] | None = typer.Option(
        None, "--set", help="any other method field as key=value (JSON value), repeatable, "
                            "e.g. --set bits=8 --set group_size=64"),
    adapter: str | None = typer.Option(
        None, help="eora: also write the compensation as a PEFT LoRA adapter to this dir"),
    data: str | None = typer.Option(
        None, help="calibration text file, or for vision models a directory of PNG/JPEG images "
                   "(default: embedded text; scikit-learn's digits for vision models)"),
    eval_data: str | None = typer.Option(
        None, help="held-out evaluation text file, or 'licenses' (out-of-domain text); an "
                   "image directory for vision models"),
    out: str = typer.Option("lowrank-out", help="output directory (written atomically; may "
                                                "replace a previous lowrank output)"),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="replace --out (and --adapter) even if it holds files "
                                        "lowrank did not write"),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: cuda if available)"),
    targets: list[str] | None = typer.Option(
        None, help="modules to compress: class name, dotted name or re:regex (repeatable)"),
    ignore: list[str] | None = typer.Option(None, help="modules to leave dense (repeatable)"),
    samples: int = typer.Option(256, help="number of calibration passages (images)"),
    finetune_steps: int = typer.Option(
        0, help="recovery fine-tuning steps (PELA-style distillation of the factors; "
                "0 = off; results are tagged fine_tuned)"),
    seq_len: int = typer.Option(128, help="tokens per calibration/evaluation passage"),
    seed: int = typer.Option(0, help="random seed"),
    pipeline: str = typer.Option(
        "auto", help="whole (calibrate and compress the model at once), layerwise (one "
                     "transformer block at a time, read from the checkpoint's shards when "
                     "used: for models larger than memory), or auto (layerwise when the "
                     "whole-model pass would not fit the device)"),
    dtype: str | None = typer.Option(
        None, help="auto (the checkpoint's dtype), float32 (default), bfloat16 or float16: "
                   "calibration forwards run in it, factors are saved in it"),
    sequential: bool = typer.Option(
        False, "--sequential", help="layer-wise: calibrate each block on the outputs of the "
                                    "already-compressed blocks before it"),
    max_shard_size: str | None = typer.Option(
        None, help="largest safetensors shard of the output, e.g. 5GB or 500MB (default 5GB); "
                   "larger outputs are sharded with a model.safetensors.index.json"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object to stdout"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress on stderr"),
) -> None:
    """Compress a model with a low-rank method and write factors, manifest and report."""
    from ..jobs import compress_job

    options = {"mode": mode, "min_keep": min_keep, "max_keep": max_keep,
               "rank_align": rank_align, "rank": _number(rank, "--rank"), "base": base,
               **_key_values(option or [])}
    summary = compress_job(model, method=method, keep=keep, alloc=alloc, options=options,
                           data=data,
                           eval_data=eval_data, out=out, device=device, seed=seed,
                           targets=targets or None, ignore=ignore or None, adapter=adapter,
                           finetune_steps=finetune_steps, overwrite=overwrite,
                           samples=samples, seq_len=seq_len, quiet=quiet, pipeline=pipeline,
                           dtype=dtype, sequential=sequential,
                           max_shard_bytes=_size(max_shard_size, "--max-shard-size"))

    if "rank" in summary:  # another rank of a torchrun job: rank 0 reports
        return

    def human(s: dict) -> None:
        _table(f"lowrank compress: {s['model']}", [
            ("method", f"{s['configuration']}, {s['tag']}"
                       + (" (the default configuration: no --method given)"
                          if s["default_configuration"] else "")),
            ("keep", f"{s['keep_actual']:.4f} of targeted parameters "
                     f"(target {s['keep_target']})"),
            ("parameters", f"{s['params_before']:,} -> {s['params_after']:,}"),
            ("quality before", _q(s["quality_before"])),
            ("quality after", _q(s["quality_after"])
             + (f" (warning: {s['evaluation_overlap']} evaluation passages are calibration "
                "passages)" if s["evaluation_overlap"] else "")),
            ("seconds", f"{s['seconds']}"),
            ("output", s["out"]),
        ])

    _emit(summary, as_json, human)


@app.command("eval")
def evaluate(
    model_or_dir: str | None = typer.Argument(
        None, help="model directory, lowrank output directory, or nothing for the default"),
    data: str | None = typer.Option(
        None, help="evaluation text file, or image directory for vision models (default: "
                   "held-out text / digits)"),
    device: str | None = typer.Option(None, help="cpu, cuda, ..."),
    seq_len: int = typer.Option(128, help="tokens per passage"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object to stdout"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress on stderr"),
) -> None:
    """Evaluate a model, or a compressed directory against its base model."""
    from ..jobs import eval_job

    result = eval_job(model_or_dir, data=data, device=device, seq_len=seq_len, quiet=quiet)

    def human(r: dict) -> None:
        unit = "images" if "images" in r else "passages"
        rows = [("model", r["model"]), ("kind", r["kind"]), (unit, str(r[unit])),
                ("parameters", f"{r['params']:,}"), ("quality", _q(r["quality"]))]
        if "base_quality" in r:
            rows.append(("base quality", _q(r["base_quality"])))
        _table("lowrank eval", rows)

    _emit(result, as_json, human)


@app.command()
def inspect(
    model: str | None = MODEL_ARG,
    keep: float = typer.Option(0.8, help="keep fraction for the budget preview"),
    targets: list[str] | None = typer.Option(None, help="module patterns (repeatable)"),
    plot: str | None = typer.Option(None, help="write a PNG of the spectra here"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object to stdout"),
) -> None:
    """Per-layer spectra, effective ranks and a parameter-budget preview (data-free)."""
    from ..jobs import inspect_job

    result = inspect_job(model, keep=keep, targets=targets or None, plot=plot)

    def human(r: dict) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"lowrank inspect: {r['model']} ({r['params']:,} parameters)")
        for col in ("module", "shape", "effective rank", "stable rank", "break-even",
                    f"rank @ keep {keep}"):
            table.add_column(col)
        for x in r["layers"]:
            table.add_row(x["name"], "x".join(map(str, x["shape"])), str(x["effective_rank"]),
                          str(x["stable_rank"]), str(x["break_even_rank"]),
                          str(x["preview_rank"] or "dense"))
        Console().print(table)
        b = r["budget_preview"]
        print(f"budget preview: targeted {r['targeted_params']:,} -> "
              f"{b['targeted_params_after']:,} (keep {b['keep_actual']:.4f}); whole model "
              f"{r['params']:,} -> {b['params_after']:,}")

    if as_json:
        for x in result["layers"]:
            x.pop("spectrum")
    _emit(result, as_json, human)


@app.command()
def report(directory: str = typer.Argument(..., help="a lowrank compress output directory")
           ) -> None:
    """Print the markdown report of an output directory."""
    from ..report import render_report

    sys.stdout.write(render_report(directory))


@app.command()
def env(as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Versions, threads and devices (for bug reports)."""
    from ..utils.env import environment

    info = environment()
    _emit(info, as_json, lambda d: _table("lowrank env", [(k, str(v)) for k, v in d.items()]))


from .train import train_command  # noqa: E402

app.command("train")(train_command)


def _run_app(args: list[str]) -> int:
    """The typer app with its own error handling off, so a usage error is one line too."""
    from typer.exceptions import Abort, TyperException

    try:
        code = app(args or ["--help"], standalone_mode=False)
    except TyperException as exc:  # bad flag, bad value, missing argument, unknown command
        from typer.main import get_command

        message = " ".join(exc.format_message().split())
        known = args[:1] if args and args[0] in get_command(app).commands else []
        print(f"lowrank: error: {message} (see '{' '.join(['lowrank', *known])} --help')",
              file=sys.stderr)
        return exc.exit_code
    except Abort:  # end of input at a prompt
        print("lowrank: aborted", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


def main() -> None:
    """Entry point: run the app, turning known errors into one line and exit status 2, and
    SIGINT / SIGTERM into a short message and exit status 130 / 143 (the output directory is
    then the previous one or none; the temporary one is removed)."""
    try:
        with signals_raise():
            code = _run_app(sys.argv[1:])
    except LowRankError as exc:
        if os.environ.get("LOWRANK_DEBUG"):
            raise
        print(f"lowrank: error: {exc}", file=sys.stderr)
        code = 2
    except Signalled as exc:
        what = "interrupted" if exc.signum == signal.SIGINT else "terminated"
        print(f"lowrank: {what} by {exc.name}; no new output was written", file=sys.stderr)
        code = exc.exit_status
    except KeyboardInterrupt:  # a SIGINT outside the main thread's handler
        print("lowrank: interrupted; no new output was written", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
