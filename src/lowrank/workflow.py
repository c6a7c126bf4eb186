"""End-to-end jobs behind the CLI: load -> calibrate -> compress -> evaluate -> save -> report.

Each job is one Python call that returns a JSON-ready dict; the CLI only parses and prints.
Text models calibrate and evaluate on text; vision models (:func:`~lowrank.models.loading.
model_kind`) on images (:mod:`lowrank.data.images`: scikit-learn's digits by default), with
quality measured as the agreement of the pooled outputs.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import torch

from .api import compress
from .calib.data import (
    MIN_CALIBRATION_PASSAGES,
    MIN_EVALUATION_PASSAGES,
    TextSource,
    read_texts,
    require_passages,
    tokenize,
)
from .compress import CompressionConfig, FactorizationConfig
from .data.images import Images, image_files, image_size, prepare_images, read_images
from .errors import ConfigError, DataError, TargetError
from .eval import Evaluator
from .io.atomic import atomic_directory, check_output_dir
from .io.checkpoint import load as load_checkpoint
from .io.checkpoint import write_checkpoint
from .models.config import model_positions
from .models.loading import DEFAULT_MODEL_NAME, LoadedModel, load_model, peek_kind
from .nn import count_parameters
from .targets import LINEAR, select_linears
from .utils.env import environment, resolve_device
from .utils.log import StageLog

DEFAULT_OUT = "lowrank-out"

#: What ``lowrank compress`` runs when no method is given: the best training-free configuration
#: measured by ``benchmarks/compress_methods.py`` (README, "Which method"): SVD-LLM whitening,
#: ranks from measured end-to-end sensitivity, with the input-embedding table in the budget
#: (dropped automatically for models whose table is tied to the output layer), its token
#: weights floored with 0.3 of the uniform distribution over the vocabulary so that tokens the
#: calibration text lacks stay represented (measured better out of domain than 0.1 at equal
#: in-domain quality).
DEFAULT_METHOD = "svdllm"
DEFAULT_OPTIONS: dict[str, Any] = {"alloc": "sensitivity", "embeddings": True,
                                   "embedding_floor": 0.3}

#: What ``lowrank compress`` runs on a vision model when no method is given: Tucker-2 of every
#: convolution kernel with per-layer keeps from measured output errors on the calibration
#: images, half of the kernel parameters kept unless --keep says otherwise (training-free, the
#: method's own default keep of 0.1 needs fine-tuning; ``benchmarks/cnn_cli.py`` compares the
#: allocations, CP and keeps).
DEFAULT_VISION_METHOD = "conv"
DEFAULT_VISION_OPTIONS: dict[str, Any] = {"alloc": "output-error", "keep": 0.5}


def make_config(method: str, **options: Any) -> CompressionConfig:
    """Build a method config by registry name from options (``None`` = the method's default).

    An option the method does not have raises :class:`ConfigError` naming it and the
    method's fields (:meth:`CompressionConfig.from_dict`), so a flag is never silently ignored.
    """
    given = {k: v for k, v in options.items() if v is not None}
    return CompressionConfig.from_dict({**given, "method": method})


def compress_job(
    model: str | None = None,
    *,
    method: str | None = None,
    keep: float | None = None,
    alloc: str | None = None,
    options: dict[str, Any] | None = None,
    data: TextSource = None,
    eval_data: TextSource = None,
    out: str | os.PathLike = DEFAULT_OUT,
    device: str | None = None,
    seed: int = 0,
    targets: list[str] | None = None,
    ignore: list[str] | None = None,
    seq_len: int = 128,
    samples: int = 256,
    quiet: bool = False,
    plots: bool = True,
    adapter: str | os.PathLike | None = None,
    finetune_steps: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Compress ``model`` (default: the embedded MiniLM) and write the output directory.

    Returns the summary (the ``--json`` object): model, method, keep target/actual, parameter
    counts, quality before/after, seconds and the output path. The directory holds
    ``model.safetensors``, ``lowrank.json``, config/tokenizer files, ``report.json``,
    ``report.md`` and PNG plots, and appears only when everything succeeded. ``out`` may
    replace a previous lowrank output; any other non-empty directory only with ``overwrite``
    (:func:`~lowrank.io.atomic.check_output_dir`). Every option, path, the device, the
    sequence length and the data are checked before the model is loaded.
    """
    start = time.perf_counter()
    log = StageLog(quiet)
    # validate everything cheap before any heavy work: nothing is loaded or written until the
    # options, paths, device, model config and data have all been checked
    _check_count("finetune_steps", finetune_steps, 0)
    _check_count("samples", samples, MIN_CALIBRATION_PASSAGES,
                 "the fewest calibration passages or images a run uses")
    _check_count("seq_len", seq_len, 2)
    _check_count("seed", seed, 0)
    out_path = check_output_dir(out, overwrite=overwrite)
    device = resolve_device(device)
    options = {k: v for k, v in (options or {}).items() if v is not None}
    default = method is None
    vision = peek_kind(model) == "vision"
    if default:
        method = DEFAULT_VISION_METHOD if vision else DEFAULT_METHOD
        defaults = DEFAULT_VISION_OPTIONS if vision else DEFAULT_OPTIONS
        alloc = alloc if alloc is not None else defaults["alloc"]
        keep = keep if keep is not None else defaults.get("keep")
        options = {**{k: v for k, v in defaults.items() if k not in ("alloc", "keep")},
                   **options}
    config = make_config(method, keep=keep, alloc=alloc, seed=seed, targets=targets,
                         ignore=ignore, **options)
    if adapter is not None:
        _check_adapter(config, adapter, out_path, overwrite)
    if vision:
        _check_vision_job(config, model, finetune_steps)
        for source in (data, eval_data):
            if source is not None and source != "default":
                image_files(source)  # the one-line error before any heavy work
    else:
        _check_seq_len(model, seq_len)
        calib_texts = read_texts(data, "calibration")
        eval_texts = read_texts(eval_data, "evaluation") \
            if eval_data is not None or data is None else None
        if eval_texts is None:  # user calibration text: every fifth passage is held out
            _check_split(len(calib_texts), data)
            eval_texts = calib_texts[::5]
            calib_texts = [t for i, t in enumerate(calib_texts) if i % 5]
        # counted again after tokenising (passages of special tokens only are dropped)
        require_passages(len(calib_texts), MIN_CALIBRATION_PASSAGES, "calibration",
                         _describe(data, split="calibration", held_out=eval_data is None))
        require_passages(len(eval_texts), MIN_EVALUATION_PASSAGES, "evaluation",
                         _describe(eval_data, split="evaluation", calibration=data))
    torch.manual_seed(seed)
    log(f"loading {model or DEFAULT_MODEL_NAME} on {device}")
    loaded = load_model(model, device=device)
    _select(loaded, config)
    if default and isinstance(config, FactorizationConfig) and config.embeddings \
            and not _table_compressible(loaded.model):
        config = dataclasses.replace(config, embeddings=False)
    if default:
        log(f"no --method given: using the default {describe_config(config)} (the best "
            "measured training-free configuration"
            + (" for vision models)" if vision else ")"))
    if vision:
        calib_inputs, eval_inputs = _vision_inputs(loaded, data, eval_data, samples)
        unit = "images"
    else:
        eval_inputs = tokenize(eval_texts, loaded.tokenizer, seq_len)
        calib_inputs = tokenize(calib_texts, loaded.tokenizer, seq_len, samples)
        require_passages(len(calib_inputs), MIN_CALIBRATION_PASSAGES, "calibration",
                         _describe(data, split="calibration", held_out=eval_data is None))
        require_passages(len(eval_inputs), MIN_EVALUATION_PASSAGES, "evaluation",
                         _describe(eval_data, split="evaluation", calibration=data))
        overlap = len(set(eval_inputs.texts) & set(calib_inputs.texts))
        if overlap:
            log(f"warning: {overlap} of {len(eval_inputs)} evaluation passages are also "
                "calibration passages: the quality after compression is not held out")
        unit = "passages"
    evaluator = Evaluator(loaded.kind, eval_inputs)
    log(f"evaluating the original model on {len(eval_inputs)} held-out {unit}")
    quality_before = evaluator.reference(loaded.model)
    original = copy.deepcopy(loaded.model) if finetune_steps > 0 else None
    if vision:
        images = calib_inputs.pixel_values if "images" in config.needs else None
        log(f"compressing with {describe_config(config)}"
            + (f" on {len(calib_inputs)} calibration images" if images is not None else ""))
        result = compress(loaded.model, config, images, quiet=quiet)
    else:
        log(f"compressing with {config.method} on {len(calib_inputs)} calibration passages")
        result = compress(loaded.model, config, calib_inputs, tokenizer=loaded.tokenizer,
                          quiet=quiet)
    fine_tune = None
    if original is not None:
        log(f"recovery fine-tuning: {finetune_steps} steps of distillation")
        fine_tune = _recover(loaded, original, calib_texts, seq_len, finetune_steps, seed,
                             quiet)
        result.tag = fine_tune["tag"]
        result.timings["fine_tune"] = fine_tune["seconds"]
        del original
    log("evaluating the compressed model")
    quality_after = evaluator.measure(loaded.model)
    summary = _summary(loaded, config, result, quality_before, quality_after, out)
    summary["configuration"] = describe_config(config)
    summary["default_configuration"] = default
    summary["evaluation_overlap"] = 0 if vision else overlap
    log(f"writing {out}")
    base = {"name": loaded.name, "path": str(loaded.path), "kind": loaded.kind}
    loaded.model.lowrank_manifest = {"method": config.to_dict(), "base_model": base}
    with atomic_directory(out, overwrite=overwrite) as tmp:
        write_checkpoint(loaded.model, tmp, base=base, copy_files=loaded.config_files())
        summary["seconds"] = round(time.perf_counter() - start, 2)
        data_info = {"calibration": _describe(data, vision, split="calibration",
                                              held_out=eval_data is None),
                     "evaluation": _describe(eval_data, vision, split="evaluation",
                                             calibration=data),
                     f"calibration_{unit}": len(calib_inputs),
                     f"evaluation_{unit}": len(eval_inputs)}
        if vision:
            data_info["image_size"] = list(eval_inputs.pixel_values.shape[-2:])
        else:
            data_info["seq_len"] = seq_len
            data_info["evaluation_overlap_passages"] = overlap
        report = {**summary, "result": result.to_dict(), "environment": environment(),
                  "fine_tune": fine_tune, "data": data_info}
        from .report import write_report

        write_report(tmp, report, result, plots=plots)
    if adapter is not None:
        from .io.peft import save_eora_adapter

        save_eora_adapter(loaded.model, adapter, base_model_name_or_path=str(loaded.path),
                          overwrite=overwrite)
        summary["adapter"] = str(adapter)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    log(f"done in {summary['seconds']} s")
    return summary


def describe_config(config: CompressionConfig) -> str:
    """``svdllm (alloc=sensitivity, embeddings=True)``: the method and its non-default fields."""
    defaults = type(config)()
    changed = [f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config)
               if f.name not in ("keep", "seed", "keeps")
               and getattr(config, f.name) != getattr(defaults, f.name)]
    return f"{config.method} ({', '.join(changed)})" if changed else config.method


def _select(loaded: LoadedModel, config: CompressionConfig) -> None:
    """Check that ``config`` selects some module of the loaded model (one-line error if not)."""
    try:
        config.selects.select(loaded.model, config.targets, config.ignore)
    except TargetError as exc:
        if loaded.kind != "vision" or config.selects is not LINEAR:
            raise
        raise TargetError(f"{exc}; '{loaded.name}' is a vision model: use --method conv to "
                          "factorize its convolutions") from exc


def _check_vision_job(config: CompressionConfig, name: str | None, finetune_steps: int) -> None:
    """Vision models calibrate on images: refuse what needs text, in one line."""
    if finetune_steps:
        raise ConfigError(f"finetune_steps={finetune_steps}: recovery fine-tuning distils on "
                          f"text and is not available for the vision model '{name}'; use 0")
    if config.needs - {"images"}:
        allocator = config.allocator
        what = f"method '{config.method}'" if config.statistics or config.refines \
            or allocator is None or not allocator.needs_probe \
            else f"allocator '{allocator.name}'"
        raise ConfigError(f"{what} calibrates on text, but '{name}' is a vision model: use "
                          "--method conv (its convolutions) or a method that needs no "
                          "calibration data, such as svd, on its Linear layers")


def _vision_inputs(loaded: LoadedModel, data: Any, eval_data: Any, samples: int
                   ) -> tuple[Images, Images]:
    """Calibration (at most ``samples``) and held-out images prepared for the model: the
    embedded digits' two parts, or the user's directory with every fifth image held out."""
    raw_calib = read_images(data, "calibration")
    if eval_data is not None:
        raw_eval = read_images(eval_data, "evaluation")
    elif data is None or data == "default":
        raw_eval = read_images(None, "evaluation")
    else:  # the user's directory: every fifth image is held out
        raw_eval = raw_calib[::5]
        raw_calib = [x for i, x in enumerate(raw_calib) if i % 5]
    raw_calib = raw_calib[:samples]
    require_passages(len(raw_calib), MIN_CALIBRATION_PASSAGES, "calibration",
                     _describe(data, True, held_out=eval_data is None), unit="images")
    require_passages(len(raw_eval), MIN_EVALUATION_PASSAGES, "evaluation",
                     _describe(eval_data, True, split="evaluation", calibration=data),
                     unit="images")
    return _prepare(loaded, raw_calib), _prepare(loaded, raw_eval)


def _prepare(loaded: LoadedModel, raw: list) -> Images:
    config = loaded.model.config
    device = next(loaded.model.parameters()).device
    images = prepare_images(raw, image_size(config), int(config.num_channels), loaded.processor)
    return Images(images.pixel_values.to(device))


def _table_compressible(model: torch.nn.Module) -> bool:
    """Whether the input-embedding table is an untied ``nn.Embedding`` (the default config
    compresses it only then)."""
    from .compress.embedding import ties_input_embeddings

    getter = getattr(model, "get_input_embeddings", None)
    table = getter() if callable(getter) else None
    return isinstance(table, torch.nn.Embedding) and not ties_input_embeddings(model)


def _recover(loaded: LoadedModel, original: torch.nn.Module, texts: list[str], seq_len: int,
             steps: int, seed: int, quiet: bool) -> dict[str, Any]:
    """PELA-style distillation of the factors; early stopping on held-out calibration text."""
    from .finetune import RecoveryConfig, causal_lm_nll, embedding_gap, recover

    stop = max(1, len(texts) // 8)
    train = tokenize(texts[:-stop] or texts, loaded.tokenizer, seq_len)
    held = tokenize(texts[-stop:], loaded.tokenizer, seq_len)
    criterion = (causal_lm_nll(held) if loaded.kind == "causal-lm"
                 else embedding_gap(original, held))
    config = RecoveryConfig(steps=steps, eval_every=max(1, steps // 8), seed=seed)
    report = recover(loaded.model, original, train, config, eval_fn=criterion,
                     tokenizer=loaded.tokenizer, quiet=quiet)
    return report.to_dict()


def _describe(source: TextSource, vision: bool = False, *, split: str = "calibration",
              held_out: bool = False, calibration: TextSource = None) -> str:
    """Where a split's data came from, as report.json states it."""
    if source is None and split == "evaluation" and calibration is not None:
        return f"held-out fifth of {_describe(calibration, vision)}"
    if source is None or source == "default":
        return "embedded default (scikit-learn digits)" if vision \
            else "embedded default (pydoc_data.topics)"
    if isinstance(source, (str, os.PathLike)):
        text = f"'{source}'" if source != "licenses" else "licence texts of installed packages"
        return f"{text} (every fifth passage held out)" if held_out and \
            split == "calibration" else text
    return f"{len(source)} strings"


def _check_count(name: str, value: Any, minimum: int, why: str = "") -> None:
    """An integer option at least ``minimum`` (bools are not counts)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}"
                          + (f" ({why})" if why else "") + f", got {value!r}")


def _check_split(count: int, source: TextSource) -> None:
    """Enough passages to hold every fifth out and still calibrate and evaluate on enough."""
    needed = max(5 * MIN_EVALUATION_PASSAGES - 4,
                 (MIN_CALIBRATION_PASSAGES * 5 + 3) // 4)
    if count < needed:
        raise DataError(f"{_describe(source)} gives {count} passage(s); with no --eval-data "
                        f"every fifth is held out for evaluation, so at least {needed} are "
                        f"needed ({MIN_CALIBRATION_PASSAGES} to calibrate, "
                        f"{MIN_EVALUATION_PASSAGES} to evaluate): give more text (passages "
                        "are cut at blank lines) or --eval-data")


def _check_adapter(config: CompressionConfig, adapter: Any, out: Path, overwrite: bool
                   ) -> None:
    """``--adapter`` exports EoRA compensations: check the method and the path up front."""
    if config.method != "eora":
        raise ConfigError(f"--adapter '{adapter}' writes EoRA compensations as a PEFT adapter, "
                          f"but the method is '{config.method}': use --method eora or drop "
                          "--adapter")
    path = check_output_dir(adapter, overwrite=overwrite, what="adapter directory")
    if path == out or out in path.parents or path in out.parents:
        raise ConfigError(f"adapter directory '{adapter}' and output directory '{out}' "
                          "overlap: give two separate directories")


#: Picture formats ``--plot`` writes (matplotlib picks the format from the suffix).
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _check_plot_path(plot: str | os.PathLike) -> None:
    """A picture path whose suffix matplotlib writes, in an existing writable directory."""
    path = Path(plot)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise ConfigError(f"plot '{plot}' must end with one of {', '.join(PLOT_SUFFIXES)}")
    if path.is_dir():
        raise ConfigError(f"plot '{plot}' is a directory: expected a file path such as "
                          "spectra.png")
    parent = path.absolute().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(f"plot '{plot}': directory '{parent}' does not exist or is not "
                          "writable")


def _check_seq_len(model: str | None, seq_len: int) -> None:
    """``seq_len`` within the positions the model's config declares."""
    positions = model_positions(model)
    if positions is not None and seq_len > positions:
        raise ConfigError(f"seq_len {seq_len} exceeds the {positions} positions of model "
                          f"'{model or DEFAULT_MODEL_NAME}': use --seq-len {positions} or "
                          "less")


def _summary(loaded: LoadedModel, config, result, before, after, out) -> dict[str, Any]:
    return {
        "model": loaded.name,
        "kind": loaded.kind,
        "method": config.method,
        "alloc": None if config.allocator is None else config.allocator.name,
        "keep_target": result.keep_target,
        "keep_actual": round(result.keep_actual, 6),
        "compression_ratio": round(1 - result.keep_actual, 6),
        "params_before": result.params_before,
        "params_after": result.params_after,
        "targeted_params_before": result.targeted_params_before,
        "targeted_params_after": result.targeted_params_after,
        "bytes_before": result.bytes_before,
        "bytes_after": result.bytes_after,
        "bytes_ratio": round(result.bytes_after / max(result.bytes_before, 1), 6),
        "quality_before": before,
        "quality_after": after,
        "tag": result.tag,
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "seconds": None,
        "out": str(Path(out)),
    }


def eval_job(
    model_or_dir: str | None = None,
    *,
    data: TextSource = None,
    device: str | None = None,
    seq_len: int = 128,
    quiet: bool = False,
) -> dict[str, Any]:
    """Evaluate a model or a ``lowrank`` directory on held-out text (images for vision models:
    ``data`` is then a directory of PNG/JPEG files, default the held-out digits).

    For a compressed directory the base model named in its manifest is the reference
    (embedding cosine / neighbour overlap for encoders and pooled outputs of vision models,
    perplexity for causal LMs).
    """
    log = StageLog(quiet)
    _check_count("seq_len", seq_len, 2)
    device = resolve_device(device)
    vision = peek_kind(model_or_dir) == "vision"
    if vision:
        if data is not None and data != "default":
            image_files(data)  # the one-line error before loading anything
    else:
        _check_seq_len(model_or_dir, seq_len)
        texts = read_texts(data, "evaluation")
    path = Path(model_or_dir) if model_or_dir else None
    is_lowrank = path is not None and path.is_dir() and (
        (path / "lowrank.json").is_file() or not (path / "config.json").is_file())
    if is_lowrank:
        log(f"loading compressed model from {path}")
        compressed = load_checkpoint(path, device=device)
        base = (compressed.lowrank_manifest.get("base_model") or {})
        base_ref = base.get("path") if base.get("path") and Path(base["path"]).exists() \
            else (None if base.get("name") in (None, DEFAULT_MODEL_NAME) else base.get("name"))
        log(f"loading base model {base_ref or DEFAULT_MODEL_NAME}")
        loaded = load_model(base_ref, device=device)
    else:
        loaded = load_model(model_or_dir, device=device)
        compressed = None
    if loaded.kind == "vision":
        inputs, unit = _prepare(loaded, read_images(data, "evaluation")), "images"
    else:
        inputs, unit = tokenize(texts, loaded.tokenizer, seq_len), "passages"
    require_passages(len(inputs), MIN_EVALUATION_PASSAGES, "evaluation",
                     _describe(data, loaded.kind == "vision", split="evaluation"), unit=unit)
    evaluator = Evaluator(loaded.kind, inputs)
    log(f"evaluating on {len(inputs)} {unit}")
    reference = evaluator.reference(loaded.model)
    out = {"model": str(model_or_dir or DEFAULT_MODEL_NAME), "kind": loaded.kind,
           unit: len(inputs), "params": count_parameters(loaded.model),
           "quality": reference}
    if compressed is not None:
        out.update({"base_model": loaded.name, "base_quality": reference,
                    "params": count_parameters(compressed),
                    "base_params": count_parameters(loaded.model),
                    "quality": evaluator.measure(compressed)})
    return out


def inspect_job(
    model: str | None = None,
    *,
    keep: float = 0.8,
    targets: list[str] | None = None,
    plot: str | os.PathLike | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Per-layer spectra, effective and stable ranks, and a budget preview at ``keep``.

    Data-free: uses the weight spectra only. The preview is the uniform allocation of plain
    SVD at ``keep``, with the resulting parameter counts.
    """
    from .alloc import BudgetItem, Uniform

    if not 0 < keep <= 1:
        raise ConfigError(f"keep must be in (0, 1] (fraction of parameters kept), got {keep}")
    if plot is not None:
        _check_plot_path(plot)
    loaded = load_model(model, device=resolve_device(device or "cpu"))
    modules = select_linears(loaded.model, targets)
    layers, items = [], []
    for name, lin in modules.items():
        s = torch.linalg.svdvals(lin.weight.detach().double())
        p = s / s.sum()
        eff = float(torch.exp(-(p * torch.log(p.clamp_min(1e-300))).sum()))
        stable = float((s ** 2).sum() / s[0] ** 2)
        items.append(BudgetItem(name, lin.out_features, lin.in_features,
                                lin.bias is not None, s))
        layers.append({"name": name, "shape": [lin.out_features, lin.in_features],
                       "effective_rank": round(eff, 2), "stable_rank": round(stable, 2),
                       "break_even_rank": round(items[-1].break_even, 1),
                       "spectrum": [float(v) for v in s]})
    allocation = Uniform().allocate(items, keep)
    for layer in layers:
        layer["preview_rank"] = allocation.ranks[layer["name"]]
    total = count_parameters(loaded.model)
    out = {
        "model": loaded.name, "kind": loaded.kind, "params": total,
        "targeted_params": allocation.params_before,
        "budget_preview": {"keep": keep, "allocator": "uniform",
                           "targeted_params_after": allocation.params_after,
                           "params_after": total - allocation.params_before
                           + allocation.params_after,
                           "keep_actual": round(allocation.keep_actual, 6)},
        "layers": layers,
    }
    if plot is not None:
        from .report.plots import plot_spectra

        plot_spectra({x["name"]: x["spectrum"] for x in layers},
                     {x["name"]: x["preview_rank"] for x in layers}, plot,
                     title=f"{loaded.name}: weight spectra (preview ranks at keep {keep})")
        out["plot"] = str(plot)
    return out

