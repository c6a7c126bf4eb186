"""``lowrank compress``: load -> calibrate -> compress -> (fine-tune) -> evaluate -> save ->
report, as one call returning a JSON-ready summary."""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..calib.data import MIN_CALIBRATION_PASSAGES, TextSource, tokenize
from ..calib.distributed import Dist, dist_barrier
from ..compress import CompressionConfig
from ..compress.layerwise import PIPELINES
from ..compress.result import CompressResult
from ..defaults import default_config, describe_config, fit_default, make_config
from ..errors import ConfigError, ModelFileError, TargetError
from ..eval import Evaluator
from ..io.atomic import atomic_directory, check_output_dir
from ..io.checkpoint import write_checkpoint
from ..io.shards import check_shard_bytes
from ..models.loading import (
    DEFAULT_MODEL_NAME,
    LoadedModel,
    default_model_path,
    load_lazy,
    load_model,
    peek_kind,
    resolve_dtype,
    resolve_path,
)
from ..surgery import LINEAR
from ..utils.checks import check_int
from ..utils.env import environment, resolve_device
from ..utils.log import StageLog
from .inputs import ImageData, JobData, TextData

DEFAULT_OUT = "lowrank-out"


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
    pipeline: str = "auto",
    dtype: str | None = None,
    sequential: bool = False,
    max_shard_bytes: int | None = None,
) -> dict[str, Any]:
    """Compress ``model`` (default: the embedded MiniLM) and write the output directory.

    Returns the summary (the ``--json`` object): model, method, keep target/actual, parameter
    counts, quality before/after, seconds and the output path. The directory holds
    ``model.safetensors``, ``lowrank.json``, config/tokenizer files, ``report.json``,
    ``report.md`` and PNG plots, and appears only when everything succeeded. ``out`` may
    replace a previous lowrank output; any other non-empty directory only with ``overwrite``
    (:func:`~lowrank.io.atomic.check_output_dir`). Without ``method`` the default
    configuration of :mod:`lowrank.defaults` runs. Every option, path, the device, the
    sequence length and the data are checked before the model is loaded.

    ``pipeline="layerwise"`` (or ``"auto"`` when the whole-model pass would not fit the
    device) loads the model block by block from its safetensors shards
    (:func:`~lowrank.models.loading.load_lazy`) and compresses it one block at a time
    (:mod:`lowrank.compress.layerwise`); evaluation streams the blocks the same way. ``dtype``:
    ``auto`` (the checkpoint's), ``float32`` (default), ``bfloat16`` or ``float16``; factors
    are saved in it. Outputs over ``max_shard_bytes`` are sharded with an index file.
    """
    start = time.perf_counter()
    dist = Dist.from_env(device)
    quiet = quiet or not dist.is_main  # one rank reports
    log = StageLog(quiet)
    # validate everything cheap before any heavy work: nothing is loaded or written until the
    # options, paths, device, model config and data have all been checked
    check_int("finetune_steps", finetune_steps, 0)
    check_int("samples", samples, MIN_CALIBRATION_PASSAGES)
    check_int("seq_len", seq_len, 2)
    check_int("seed", seed, 0)
    out_path = check_output_dir(out, overwrite=overwrite)
    device = rank_device(resolve_device(device), dist)
    if pipeline not in PIPELINES:
        raise ConfigError(f"--pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
    load_dtype = resolve_dtype(dtype, model or default_model_path())
    if max_shard_bytes is not None:
        check_shard_bytes(max_shard_bytes)
    options = {k: v for k, v in (options or {}).items() if v is not None}
    default = method is None
    vision = peek_kind(model) == "vision"
    fields = {"keep": keep, "alloc": alloc, "seed": seed, "targets": targets, "ignore": ignore}
    config = default_config(vision, **fields, **options) if default \
        else make_config(method, **fields, **options)
    if adapter is not None:
        _check_adapter(config, adapter, out_path, overwrite)
    if vision:
        _check_vision_job(config, model, finetune_steps)
        if pipeline == "layerwise" or sequential:
            raise ConfigError("the layer-wise pipeline compresses text models; vision models "
                              "use --pipeline whole")
        inputs: JobData = ImageData(data, eval_data)
    else:
        inputs = TextData(model, data, eval_data, seq_len)
    if sequential and pipeline == "whole":
        raise ConfigError("--sequential calibrates block by block: use --pipeline layerwise "
                          "(or auto)")
    torch.manual_seed(seed)
    lazy = not vision and (pipeline == "layerwise" or sequential or (
        pipeline == "auto" and checkpoint_too_big(model, load_dtype, device)))
    if dist.active and finetune_steps:
        raise ConfigError(f"finetune_steps={finetune_steps}: recovery fine-tuning runs in one "
                          "process; drop it under torchrun")
    if lazy and finetune_steps:
        raise ConfigError(f"finetune_steps={finetune_steps}: recovery fine-tuning trains the "
                          "whole model; it is not available in the layer-wise pipeline")
    log(f"loading {model or DEFAULT_MODEL_NAME} on {device} in "
        f"{str(load_dtype).removeprefix('torch.')}"
        + (" (layer-wise: blocks load from the checkpoint when used)" if lazy else ""))
    loaded = load_lazy(model, device=device, dtype=load_dtype) if lazy \
        else load_model(model, device=device, dtype=load_dtype)
    _select(loaded, config)
    if default:
        config = fit_default(config, loaded.model)
        log(f"no --method given: using the default {describe_config(config)} (the best "
            "measured training-free configuration"
            + (" for vision models)" if vision else ")"))
    inputs.prepare(loaded, samples, log)
    evaluator = Evaluator(loaded.kind, inputs.evaluation)
    log(f"evaluating the original model on {len(inputs.evaluation)} held-out {inputs.unit}")
    with runnable(loaded) as model_now:
        quality_before = evaluator.reference(model_now) if dist.is_main else {}
    original = copy.deepcopy(loaded.model) if finetune_steps > 0 else None
    if dist.active:
        log(f"{dist.world} processes: each calibrates on its share of the passages")
    result = inputs.compress(loaded, config, quiet, log,
                             pipeline="layerwise" if lazy else pipeline, sequential=sequential,
                             dist=dist)
    if not dist.is_main:  # rank 0 evaluates and writes the output
        dist_barrier(dist)
        return {"rank": dist.rank, "processes": dist.world, "out": str(Path(out))}
    fine_tune = None
    if original is not None:  # text only: _check_vision_job refuses fine-tuning on images
        log(f"recovery fine-tuning: {finetune_steps} steps of distillation")
        fine_tune = _recover(loaded, original, inputs.calib_texts, seq_len, finetune_steps,
                             seed, quiet)
        result.tag = fine_tune["tag"]
        result.timings["fine_tune"] = fine_tune["seconds"]
        del original
    log("evaluating the compressed model")
    with runnable(loaded) as model_now:
        quality_after = evaluator.measure(model_now)
    if lazy:
        loaded.model = loaded.lazy.to_model()
    summary = _summary(loaded, config, result, quality_before, quality_after, out)
    summary["configuration"] = describe_config(config)
    summary["default_configuration"] = default
    summary["evaluation_overlap"] = inputs.overlap
    summary["processes"] = dist.world
    log(f"writing {out}")
    base = {"name": loaded.name, "path": str(loaded.path), "kind": loaded.kind}
    loaded.model.lowrank_manifest = {"method": config.to_dict(), "base_model": base}
    with atomic_directory(out, overwrite=overwrite) as tmp:
        write_checkpoint(loaded.model, tmp, base=base, copy_files=loaded.config_files(),
                         max_shard_bytes=max_shard_bytes)
        summary["seconds"] = round(time.perf_counter() - start, 2)
        report = {**summary, "result": result.to_dict(), "environment": environment(),
                  "fine_tune": fine_tune, "data": inputs.info()}
        from ..report import write_report

        write_report(tmp, report, result, plots=plots)
    if adapter is not None:
        from ..io.peft import save_eora_adapter

        save_eora_adapter(loaded.model, adapter, base_model_name_or_path=str(loaded.path),
                          overwrite=overwrite)
        summary["adapter"] = str(adapter)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    log(f"done in {summary['seconds']} s")
    dist_barrier(dist)
    return summary


@contextmanager
def runnable(loaded: LoadedModel) -> Iterator[torch.nn.Module]:
    """The model for whole forward passes: as loaded, or streaming its blocks when lazy."""
    if loaded.lazy is None:
        yield loaded.model
    else:
        with loaded.lazy.streaming() as model:
            yield model


def rank_device(device: str, dist: Dist) -> str:
    """Under ``torchrun`` each rank of a CUDA job takes the GPU of its local rank."""
    if dist.active and device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', dist.rank))}"
    return device


def checkpoint_too_big(model: str | None, dtype: torch.dtype, device: str) -> bool:
    """Whether loading the checkpoint whole and compressing it at once would not fit the
    device: its weights in ``dtype`` plus float64 statistics and decompositions (about 16
    bytes per parameter) against the device's free memory."""
    from ..compress.layerwise import free_bytes
    from ..io.shards import stored_tensors

    path = resolve_path(model)
    try:
        shapes = [shape for _, shape in stored_tensors(path).values()]
    except ModelFileError:
        return False  # not a safetensors checkpoint: the whole-model loader decides
    numel = sum(math.prod(shape) for shape in shapes)
    need = numel * (torch.finfo(dtype).bits // 8 + 16)
    return need > free_bytes(torch.device(device))


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


def _recover(loaded: LoadedModel, original: torch.nn.Module, texts: list[str], seq_len: int,
             steps: int, seed: int, quiet: bool) -> dict[str, Any]:
    """PELA-style distillation of the factors; early stopping on held-out calibration text."""
    from ..finetune import RecoveryConfig, causal_lm_nll, embedding_gap, recover

    stop = max(1, len(texts) // 8)
    train = tokenize(texts[:-stop] or texts, loaded.tokenizer, seq_len)
    held = tokenize(texts[-stop:], loaded.tokenizer, seq_len)
    criterion = (causal_lm_nll(held) if loaded.kind == "causal-lm"
                 else embedding_gap(original, held))
    config = RecoveryConfig(steps=steps, eval_every=max(1, steps // 8), seed=seed)
    report = recover(loaded.model, original, train, config, eval_fn=criterion,
                     tokenizer=loaded.tokenizer, quiet=quiet)
    return report.to_dict()


def _summary(loaded: LoadedModel, config: CompressionConfig, result: CompressResult,
             before: dict[str, Any], after: dict[str, Any], out: str | os.PathLike
             ) -> dict[str, Any]:
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
