"""The verbs users call: compress, to_dense (save/load live in :mod:`lowrank.io`)."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from .calib.data import TextSource, TokenizedText, read_texts, tokenize
from .calib.stats import CalibrationStats, collect_statistics
from .compress.base import CompressionConfig, output_error, replace_module
from .compress.factorize import sensitivity_probe
from .compress.result import CompressResult
from .errors import ConfigError, DataError, LowRankError
from .nn import count_bytes, count_parameters
from .registry import get_allocator
from .targets import select_linears

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
    from .models.loading import is_causal_lm

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
) -> CalibrationStats:
    """Collect the statistics ``config`` needs for its targeted modules (one pass over data)."""
    modules = select_linears(model, config.targets, config.ignore)
    if isinstance(data, TokenizedText):
        tokens = data
    else:
        tokenizer = tokenizer if tokenizer is not None else _guess_tokenizer(model)
        tokens = _tokens(data, tokenizer, seq_len, max_samples)
    fisher = _fisher_loss(model) if "fisher" in config.needs else None
    if fisher == "contrastive" and tokenizer is None:
        tokenizer = _guess_tokenizer(model)
    return collect_statistics(model, modules, tokens, fisher_loss=fisher, tokenizer=tokenizer,
                              batch_size=batch_size, quiet=quiet)


def compress(
    model: nn.Module,
    config: CompressionConfig,
    data: TextSource | TokenizedText = None,
    *,
    tokenizer: Any = None,
    stats: CalibrationStats | None = None,
    seq_len: int = 128,
    max_samples: int = 256,
    batch_size: int = 16,
    quiet: bool = True,
) -> CompressResult:
    """Compress ``model`` in place with ``config``; return what was done and measured.

    ``data`` is calibration text (list of strings, a text file path, ``"default"`` for the
    embedded text) or already tokenised :class:`TokenizedText`; ``stats`` reuses statistics
    from :func:`calibrate` / :meth:`CalibrationStats.load`. Methods that need data raise
    :class:`DataError` without either. The method transforms its targeted modules in place
    (factorizations put a :class:`~lowrank.nn.LowRankLinear` at each allocated rank, or leave
    a matrix dense where that would not save; EoRA wraps a compressed layer with its
    low-rank compensation; quantization and pruning replace or mask the weight).
    """
    if not isinstance(config, CompressionConfig):
        raise ConfigError(f"config must be a method config such as lowrank.SVDLLM(keep=0.8), "
                          f"got {type(config).__name__}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    select = getattr(config, "select_modules", None)  # methods on other layers (convolutions)
    modules = select(model) if callable(select) else \
        select_linears(model, config.targets, config.ignore)
    params_before, bytes_before = count_parameters(model), count_bytes(model)
    tokens = None
    if data is not None:
        if tokenizer is None and not isinstance(data, TokenizedText):
            tokenizer = _guess_tokenizer(model)
        tokens = _tokens(data, tokenizer, seq_len, max_samples)
    if stats is None and tokens is not None:
        stats = calibrate(model, config, tokens, tokenizer=tokenizer, batch_size=batch_size,
                          quiet=quiet)
        timings["calibration"] = time.perf_counter() - t0
    if config.requires_data and stats is None:
        raise DataError(f"method '{config.method}' needs calibration data: pass data=<texts> "
                        "(or stats=...) to compress(), or --data on the command line")
    if stats is not None:
        missing = [n for n in modules if n not in stats.module_site]
        if missing:
            raise DataError(f"statistics do not cover targeted modules {missing[:3]}: "
                            "recollect them for these targets")

    if config.refines and tokens is None:
        raise DataError(f"method '{config.method}' with its refit stage needs calibration "
                        "text: pass data=<texts>")
    original = copy.deepcopy(model) if config.refines else None

    t1 = time.perf_counter()
    allocator = get_allocator(config.alloc) if hasattr(config, "alloc") and not callable(select) \
        else None  # rank allocators of linear layers (conv allocates its keeps itself)
    if getattr(allocator, "needs_probe", False):
        if tokens is None:
            raise DataError("the 'sensitivity' allocator measures the model end to end: pass "
                            "calibration text (data=...) to compress()")
        with sensitivity_probe(_output_change_probe(model, tokens)):
            outcome = config.apply(model, modules, stats)
    else:
        outcome = config.apply(model, modules, stats)
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
                    approx = model.get_submodule(m.name).weight_product().detach().double()
                    weight = original.get_submodule(m.name).weight.detach().double()
                    m.rel_output_error = output_error(weight, approx,
                                                      stats.site(m.name).gram)
        del original
        timings["refine"] = time.perf_counter() - t4
    timings["total"] = time.perf_counter() - t0

    result = CompressResult(
        method=config.to_dict(), keep_target=outcome.keep_target,
        keep_actual=outcome.params_after / max(outcome.params_before, 1),
        targeted_params_before=outcome.params_before,
        targeted_params_after=outcome.params_after,
        params_before=params_before, params_after=count_parameters(model),
        bytes_before=bytes_before, bytes_after=count_bytes(model), modules=reports,
        allocation=outcome.allocation, timings=timings,
        calibration=dict(stats.meta) if stats is not None else {},
    )
    setattr(model, MANIFEST_ATTR, {"method": config.to_dict()})
    return result


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


def _output_change_probe(model: nn.Module, tokens: TokenizedText, passages: int = 32,
                         batch_size: int = 16):
    """``probe(name, replacement)``: how much the model's end-to-end quality moves on the first
    ``passages`` calibration passages when module ``name`` alone is replaced.

    The measure is the one the evaluation reports, so the allocation optimises it: for
    sentence encoders ``1 - cosine`` of the sentence embeddings against the original's, for
    causal LMs the mean KL divergence of the next-token distributions from the original's
    (both second order in a small perturbation).
    """
    from .models.forward import hidden_states, sentence_embeddings
    from .models.loading import is_causal_lm

    device = next(model.parameters()).device
    subset = TokenizedText(tokens.input_ids[:passages], tokens.attention_mask[:passages],
                           tokens.texts[:passages])
    batches = [b.to(device) for b in subset.batches(batch_size)]
    causal = is_causal_lm(model)

    def outputs(batch):
        if causal:
            return torch.log_softmax(hidden_states(model, batch).float(), dim=-1)
        return sentence_embeddings(model, batch)

    with torch.no_grad():
        reference = [outputs(b) for b in batches]

    def probe(name: str, replacement: nn.Module) -> float:
        original = model.get_submodule(name)
        replace_module(model, name, replacement)
        try:
            total = count = 0.0
            with torch.no_grad():
                for batch, ref in zip(batches, reference, strict=True):
                    out = outputs(batch)
                    if causal:
                        mask = batch.attention_mask.bool()
                        kl = (ref.exp() * (ref - out)).sum(-1)
                        total += float(kl[mask].sum())
                        count += int(mask.sum())
                    else:
                        total += float((1 - (out * ref).sum(-1)).sum())
                        count += out.shape[0]
        finally:
            replace_module(model, name, original)
        return max(total / max(count, 1), 0.0)

    probe.passages = subset  # type: ignore[attr-defined]  # what the probe measures on
    return probe


def to_dense(model: nn.Module) -> nn.Module:
    """Replace every structured layer by its dense equivalent, in place, outermost first:
    ``to_linear`` (low-rank, quantized, residual layers) or ``to_embedding`` (factorized
    embedding tables)."""
    for name, module in list(model.named_modules()):
        if not name or not _still_attached(model, name, module):
            continue
        if hasattr(module, "to_linear"):
            replace_module(model, name, module.to_linear())
        elif hasattr(module, "to_embedding"):
            replace_module(model, name, module.to_embedding())
    return model


def _still_attached(model: nn.Module, name: str, module: nn.Module) -> bool:
    try:
        return model.get_submodule(name) is module
    except AttributeError:
        return False
