"""The verbs users call: compress, to_dense (save/load live in :mod:`lowrank.io`)."""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .calib.data import TextSource, TokenizedText, read_texts, tokenize
from .calib.distributed import Dist, collect_statistics_distributed
from .calib.stats import CalibrationStats, collect_statistics
from .compress.base import Calibration, CompressionConfig, MethodOutcome, output_error
from .compress.result import CompressResult
from .errors import ConfigError, DataError, LowRankError
from .models.loading import is_causal_lm
from .nn import StructuredLayer, count_bytes, count_parameters
from .surgery import LINEAR, replace_module

if TYPE_CHECKING:
    from .models.lazy import LazyModel

MANIFEST_ATTR = "lowrank_manifest"


def _guess_tokenizer(model: nn.Module) -> Any:
    path = getattr(getattr(model, "config", None), "_name_or_path", None)
    if path:
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(path)
        except Exception:  # noqa: BLE001 - any failure means "no tokenizer found"
            pass
    raise DataError("calibration text needs a tokenizer: pass tokenizer=... to compress()")


def _fisher_loss(model: nn.Module) -> str:
    return "causal-lm" if is_causal_lm(model) else "contrastive"


def _tokens(data: TextSource | TokenizedText, tokenizer: Any, seq_len: int,
            max_samples: int) -> TokenizedText:
    if isinstance(data, TokenizedText):
        return data
    if tokenizer is None:
        raise DataError("calibration text needs a tokenizer: pass tokenizer=... to compress()")
    return tokenize(read_texts(data, "calibration"), tokenizer, seq_len=seq_len,
                    max_samples=max_samples)


def calibrate(
    model: nn.Module,
    config: CompressionConfig,
    data: TextSource | TokenizedText,
    *,
    tokenizer: Any = None,
    seq_len: int = 128,
    max_samples: int = 256,
    batch_size: int = 16,
    quiet: bool = True,
    dist: Dist | None = None,
) -> CalibrationStats:
    """Collect the statistics ``config`` needs for its targeted linear layers (one pass over
    data; with ``dist``, each rank's share of the passages, summed over the ranks)."""
    modules = LINEAR.select(model, config.targets, config.ignore)
    if isinstance(data, TokenizedText):
        tokens = data
    else:
        tokenizer = tokenizer if tokenizer is not None else _guess_tokenizer(model)
        tokens = _tokens(data, tokenizer, seq_len, max_samples)
    fisher = _fisher_loss(model) if "fisher" in config.statistics else None
    if fisher == "contrastive" and tokenizer is None:
        tokenizer = _guess_tokenizer(model)
    if dist is not None and dist.active:
        return collect_statistics_distributed(model, modules, tokens, dist, fisher_loss=fisher,
                                              tokenizer=tokenizer, batch_size=batch_size,
                                              quiet=quiet)
    return collect_statistics(model, modules, tokens, fisher_loss=fisher, tokenizer=tokenizer,
                              batch_size=batch_size, quiet=quiet)


def compress(
    model: nn.Module | LazyModel,
    config: CompressionConfig,
    data: TextSource | TokenizedText | torch.Tensor = None,
    *,
    tokenizer: Any = None,
    stats: CalibrationStats | None = None,
    seq_len: int = 128,
    max_samples: int = 256,
    batch_size: int = 16,
    quiet: bool = True,
    pipeline: str = "auto",
    device: str | torch.device | None = None,
    sequential: bool = False,
    dist: Dist | None = None,
) -> CompressResult:
    """Compress ``model`` in place with ``config``; return what was done and measured.

    ``data`` is calibration text (list of strings, a text file path, ``"default"`` for the
    embedded text), already tokenised :class:`TokenizedText`, or, for methods that calibrate on
    images (``"images" in config.needs``: the conv method's output-error allocation), a tensor
    of images as the model takes them. ``stats`` reuses statistics from :func:`calibrate` /
    :meth:`CalibrationStats.load`. What the method needs (``config.needs``) must be given, else
    :class:`DataError`. The method transforms the layers it selects (``config.selects``) in
    place (factorizations put a :class:`~lowrank.nn.LowRankLinear` at each allocated rank, or
    leave a matrix dense where that would not save; EoRA wraps a compressed layer with its
    low-rank compensation; quantization and pruning replace or mask the weight).

    ``pipeline``: ``"whole"`` calibrates and compresses the model at once; ``"layerwise"``
    one transformer block at a time on ``device`` (:mod:`lowrank.compress.layerwise`; equal
    results, memory of one block); ``"auto"`` (default) is layer-wise for a
    :class:`~lowrank.models.lazy.LazyModel` (blocks materialised from the checkpoint on
    demand) and whenever the whole-model pass would not fit the device's free memory.
    ``sequential=True`` (layer-wise only) calibrates each block on the outputs of the
    already-compressed blocks before it. ``dist`` (:class:`~lowrank.calib.distributed.Dist`,
    e.g. ``Dist.from_env()`` under ``torchrun``) splits the calibration passages over the
    ranks, all-reduces the statistics and spreads the factorizations' decompositions; every
    rank ends with the same compressed model as a single process.
    """
    from .compress.layerwise import PIPELINES, choose_pipeline, compress_layerwise
    from .models.lazy import LazyModel

    if pipeline not in PIPELINES:
        raise ConfigError(f"pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
    access = None
    if isinstance(model, LazyModel):
        if pipeline == "whole":
            raise ConfigError("a LazyModel holds one block at a time: use pipeline='layerwise' "
                              "(or 'auto'), or load the whole model with lowrank.models."
                              "load_model for pipeline='whole'")
        access, model = model, model.model
    if not isinstance(config, CompressionConfig):
        raise ConfigError(f"config must be a method config such as lowrank.SVDLLM(keep=0.8), "
                          f"got {type(config).__name__}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    needs = config.needs
    modules = config.selects.select(model, config.targets, config.ignore)
    params_before, bytes_before = count_parameters(model), count_bytes(model)
    tokens = images = None
    if isinstance(data, torch.Tensor):
        if "images" not in needs:
            raise DataError(f"method '{config.method}' as configured takes no calibration "
                            "images: pass calibration text (or nothing) as data")
        images = data
    elif data is not None:
        if "images" in needs:
            raise DataError(f"method '{config.method}' as configured calibrates on images: pass "
                            "data=<tensor of images as the model takes them>")
        if tokenizer is None and not isinstance(data, TokenizedText):
            tokenizer = _guess_tokenizer(model)
        tokens = _tokens(data, tokenizer, seq_len, max_samples)
    if choose_pipeline(pipeline, model, config, access, device) == "layerwise":
        if stats is not None or tokens is None:
            raise ConfigError("the layer-wise pipeline streams calibration text through the "
                              "blocks and collects each block's statistics itself: pass "
                              "data=<texts> and no stats=")
        if access is None:
            from .blocks import ResidentBlocks

            access = ResidentBlocks(model, device)
        if "fisher" in config.statistics and tokenizer is None \
                and not is_causal_lm(model):
            tokenizer = _guess_tokenizer(model)
        outcome, meta = compress_layerwise(access, config, modules, tokens,
                                           batch_size=batch_size, sequential=sequential,
                                           quiet=quiet, tokenizer=tokenizer, dist=dist)
        _require_finite(model, [m.name for m in outcome.reports], config.method)
        timings["compression"] = timings["total"] = time.perf_counter() - t0
        return _result(model, config, outcome, meta, timings, params_before, bytes_before)
    if sequential:
        raise ConfigError("sequential=True calibrates block by block: use "
                          "pipeline='layerwise'")
    if stats is None and tokens is not None and config.selects is LINEAR:
        stats = calibrate(model, config, tokens, tokenizer=tokenizer, batch_size=batch_size,
                          quiet=quiet, dist=dist)
        timings["calibration"] = time.perf_counter() - t0
    _require_inputs(config, stats, tokens, images)
    if stats is not None:
        missing = [n for n in modules if n not in stats.module_site]
        if missing:
            raise DataError(f"statistics do not cover targeted modules {missing[:3]}: "
                            "recollect them for these targets")
    original = copy.deepcopy(model) if config.refines else None

    t1 = time.perf_counter()
    outcome = config.apply(model, modules, Calibration(stats, tokens, images, dist))
    reports = outcome.reports
    _require_finite(model, [m.name for m in reports], config.method)
    timings["compression"] = time.perf_counter() - t1
    if original is not None:
        t4 = time.perf_counter()
        factored = [m.name for m in reports if m.rank is not None]
        change = config.refine(original, model, factored, tokens)
        for m in reports:
            if m.name in change:
                m.notes["refit_relative_change"] = change[m.name]
                if stats is not None:
                    approx = model.get_submodule(m.name).dense_weight().detach().double()
                    weight = original.get_submodule(m.name).weight.detach().double()
                    m.rel_output_error = output_error(weight, approx,
                                                      stats.site(m.name).gram)
        del original
        timings["refine"] = time.perf_counter() - t4
    timings["total"] = time.perf_counter() - t0
    meta = {**stats.meta, "pipeline": "whole"} if stats is not None else {}
    return _result(model, config, outcome, meta, timings, params_before, bytes_before)


def _result(model: nn.Module, config: CompressionConfig, outcome: MethodOutcome,
            calibration: dict[str, Any], timings: dict[str, float], params_before: int,
            bytes_before: int) -> CompressResult:
    """The :class:`CompressResult` of a finished compression (and the model's manifest)."""
    result = CompressResult(
        method=config.to_dict(), keep_target=outcome.keep_target,
        keep_actual=outcome.params_after / max(outcome.params_before, 1),
        targeted_params_before=outcome.params_before,
        targeted_params_after=outcome.params_after,
        params_before=params_before, params_after=count_parameters(model),
        bytes_before=bytes_before, bytes_after=count_bytes(model), modules=outcome.reports,
        allocation=outcome.allocation, timings=timings, calibration=dict(calibration),
    )
    setattr(model, MANIFEST_ATTR, {"method": config.to_dict()})
    return result


def _require_inputs(config: CompressionConfig, stats: CalibrationStats | None,
                    tokens: TokenizedText | None, images: torch.Tensor | None) -> None:
    """One-line :class:`DataError` when ``config.needs`` something that was not given."""
    needs = config.needs
    if config.statistics and stats is None:
        raise DataError(f"method '{config.method}' needs calibration data: pass data=<texts> "
                        "(or stats=...) to compress(), or --data on the command line")
    if "text" in needs and tokens is None:
        allocator = config.allocator
        if allocator is not None and allocator.needs_probe:
            raise DataError(f"the '{allocator.name}' allocator measures the model end to end: "
                            "pass calibration text (data=...) to compress()")
        what = "with its refit stage " if config.refines else ""
        raise DataError(f"method '{config.method}' {what}needs calibration text: pass "
                        "data=<texts>")
    if "images" in needs and images is None:
        raise DataError(f"method '{config.method}' as configured measures on calibration "
                        "images: pass data=<tensor of images as the model takes them>")


def _require_finite(model: nn.Module, names: list[str], method: str) -> None:
    """Refuse a compression whose new tensors hold NaN/inf (naming the module and tensor):
    non-finite calibration statistics or weights would otherwise save a broken model."""
    for name in names:
        for tensor_name, tensor in model.get_submodule(name).state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise LowRankError(f"method '{method}' produced {bad} non-finite values in "
                                   f"{name}.{tensor_name}: check the model's weights and its "
                                   "outputs on the calibration data for NaN/inf")


def to_dense(model: nn.Module) -> nn.Module:
    """Replace every :class:`~lowrank.nn.StructuredLayer` below ``model`` by its
    ``to_dense_module()`` (an equivalent ``nn.Linear`` / ``nn.Conv2d`` / ``nn.Embedding``), in
    place, outermost first; returns ``model``."""
    for name, module in list(model.named_modules()):
        if name and isinstance(module, StructuredLayer) and _still_attached(model, name, module):
            replace_module(model, name, module.to_dense_module())
    return model


def _still_attached(model: nn.Module, name: str, module: nn.Module) -> bool:
    try:
        return model.get_submodule(name) is module
    except AttributeError:
        return False
