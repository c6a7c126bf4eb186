"""Layer-wise compression: one transformer block on the compute device at a time.

The pipeline of GPTQ-style tools (llm-compressor's sequential pipeline, SVD-LLM's scripts):
the calibration passages enter the first block once; then for each block in order its weights
are onloaded (:class:`~lowrank.blocks.BlockAccess`: moved to the device, or materialised from
the checkpoint's shards by :class:`~lowrank.models.lazy.LazyModel`), its statistics are
collected on its stored inputs, it is compressed, and it produces the next block's inputs:
from the original block (the statistics are those of the uncompressed model, as the
whole-model pass collects them) or, with ``sequential=True``, from the compressed one (later
blocks are calibrated on what the compressed upstream actually produces). Statistics,
decompositions and activations of one block only are alive at a time.

A global budget needs no global statistics. A factorization's allocator reads a vector per
matrix (its weighted spectrum, its measured sensitivity): a first pass records those and
frees everything else, the allocation runs on them, and a second pass recomputes each block's
decompositions and applies the ranks. An allocator that needs only the shapes (``uniform``)
allocates before anything is decomposed, in one pass. Sensitivities come from the block-local
estimate (:class:`~lowrank.compress.estimate.BlockProbe`), whose gradient energies stream
through the blocks too. MoDeGPT's block importances are measured on the stream; methods
without a cross-block budget (``block_local``) run block by block. On a model that fits, the
result equals the whole-model pipeline's (the tests compare outputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..blocks import (
    BlockAccess,
    BlockCall,
    capture_block_inputs,
    main_blocks,
    run_block,
    with_hidden,
)
from ..calib.data import TokenizedText
from ..calib.distributed import Dist, all_reduce_stats, shard_passages
from ..calib.stats import CalibrationStats, block_statistics
from ..errors import ConfigError, DataError
from ..surgery import LINEAR, block_lists
from ..utils.progress import progress
from .base import Calibration, CompressionConfig, MethodOutcome
from .estimate import BlockProbe, stream_hidden
from .factorize import (
    EmbeddingPart,
    FactorizationConfig,
    decompose_all,
    measure_items,
    replace_at,
)

PIPELINES = ("auto", "whole", "layerwise")


@dataclass
class _Stream:
    """The calibration batches at the current block: their block calls and masks."""

    calls: list[BlockCall]
    masks: list[torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


def choose_pipeline(pipeline: str, model: nn.Module, config: CompressionConfig,
                    access: BlockAccess | None, device: str | torch.device | None) -> str:
    """``'whole'`` or ``'layerwise'`` for ``pipeline`` (``'auto'``: layer-wise for a model
    whose blocks load on demand, or when :func:`whole_model_bytes` exceeds the free memory of
    the device, provided the method has a layer-wise form and the model repeated blocks)."""
    if access is not None:
        return "layerwise"
    if pipeline != "auto":
        return pipeline
    has_form = config.selects is LINEAR and not config.refines \
        and (isinstance(config, FactorizationConfig) or config.block_local)
    if not has_form or not block_lists(model):
        return "whole"
    target = torch.device(device) if device is not None else next(model.parameters()).device
    return "layerwise" if whole_model_bytes(model, config) > free_bytes(target) else "whole"


def whole_model_bytes(model: nn.Module, config: CompressionConfig) -> int:
    """Peak bytes of the whole-model pass, roughly: the weights, a float64 Gram per targeted
    input and, for factorizations, the float64 decompositions of every targeted matrix."""
    from ..nn import count_bytes

    linears = config.selects.select(model, config.targets, config.ignore)
    grams = sum(8 * m.in_features ** 2 for m in linears.values())
    decomps = sum(16 * m.weight.numel() for m in linears.values()) \
        if isinstance(config, FactorizationConfig) else 0
    return count_bytes(model) + grams + decomps


def free_bytes(device: torch.device) -> int:
    """Free memory of ``device``: CUDA's ``mem_get_info``, the host's ``MemAvailable``."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2 ** 62  # unknown: assume it fits


def check_layerwise(config: CompressionConfig, access: BlockAccess,
                    modules: dict[str, nn.Module]) -> list[dict[str, nn.Module]]:
    """Refuse what the layer-wise pipeline cannot do (one line each); the targeted modules
    grouped by block."""
    if config.selects is not LINEAR:
        raise ConfigError(f"method '{config.method}' transforms {config.selects.description}s; "
                          "the layer-wise pipeline handles linear layers of text models")
    if config.refines:
        raise ConfigError(f"method '{config.method}' as configured refits on the whole "
                          "compressed model; use pipeline='whole', or sequential=True in the "
                          "layer-wise pipeline for error-correcting calibration")
    if not isinstance(config, FactorizationConfig):
        config.block_configs(1, [0.0] if config.measures_blocks else None)  # refuses
    prefix = access.prefix + "."
    groups: list[dict[str, nn.Module]] = [{} for _ in range(len(access))]
    outside = []
    for name, module in modules.items():
        if name.startswith(prefix):
            groups[int(name[len(prefix):].split(".", 1)[0])][name] = module
        else:
            outside.append(name)
    if outside:
        raise ConfigError(f"the layer-wise pipeline compresses modules inside the repeated "
                          f"blocks '{access.prefix}'; these targets are outside them: "
                          f"{outside[:3]} (ignore them, or use pipeline='whole')")
    return groups


def compress_layerwise(access: BlockAccess, config: CompressionConfig,
                       modules: dict[str, nn.Module], tokens: TokenizedText, *,
                       batch_size: int = 16, sequential: bool = False, quiet: bool = True,
                       tokenizer: Any = None, fisher_batch_size: int = 8,
                       dist: Dist | None = None) -> tuple[MethodOutcome, dict[str, Any]]:
    """Compress the targeted ``modules`` of ``access.model`` block by block (module
    docstring); returns the outcome and the calibration metadata.

    With ``dist`` (a ``torchrun`` process group) each rank streams its block of the
    calibration passages, every block's statistics are all-reduced, and each block's
    decompositions are spread over the ranks, which exchange the factors: every rank ends
    with the whole compressed model, equal to the single-process one."""
    groups = check_layerwise(config, access, modules)
    shard = shard_passages(tokens, dist) if dist is not None and dist.active else tokens
    batches = [b.to(access.device) for b in shard.batches(batch_size)]
    meta = {"samples": len(tokens), "seq_len": int(tokens.input_ids.shape[1]),
            "tokens": tokens.num_tokens, "gram_products": "torch.float32",
            "gram_accumulator": "torch.float64", "pipeline": "layerwise",
            "sequential": sequential, "processes": 1 if dist is None else dist.world}
    runner = _Runner(access, groups, batches, sequential, quiet, dist)
    if "fisher" in config.statistics:
        from ..calib.streamed_fisher import streamed_fisher
        from ..models.loading import is_causal_lm

        loss = "causal-lm" if is_causal_lm(access.model) else "contrastive"
        runner.fisher = streamed_fisher(access, groups, shard, loss, tokenizer=tokenizer,
                                        batch_size=fisher_batch_size, quiet=quiet)
        if dist is not None and dist.active:
            all_reduce_stats(CalibrationStats(fisher=runner.fisher), dist)
        meta.update({"fisher_loss": loss, "fisher_estimate": f"squared gradients per "
                     f"micro-batch of {fisher_batch_size} passages (streamed)"})
    if isinstance(config, FactorizationConfig):
        outcome = _factorize(runner, config, tokens)
    else:
        outcome = _blockwise(runner, config, tokens)
    return outcome, meta


class _Runner:
    """Streams the calibration batches through the blocks, one block resident at a time."""

    def __init__(self, access: BlockAccess, groups: list[dict[str, nn.Module]],
                 batches: list, sequential: bool, quiet: bool, dist: Dist | None) -> None:
        self.access, self.groups, self.batches = access, groups, batches
        self.sequential, self.quiet, self.dist = sequential, quiet, dist
        self.masks = [b.attention_mask for b in batches]
        self.fisher: dict[str, Any] = {}

    def first_calls(self) -> list[BlockCall]:
        _, blocks = main_blocks(self.access.model)
        return capture_block_inputs(self.access.model, blocks, self.batches)

    def run(self, label: str, visit, *, final: bool) -> None:
        """For each block: onload, ``visit(index, block, stats)`` (statistics of its targets
        on its inputs; the block may be changed in place), produce the next inputs, and
        release it (``final``: the block is done and kept as it now is)."""
        calls = self.first_calls()
        for index in progress(range(len(self.access)), label, quiet=self.quiet):
            block = self.access.block(index)
            group = self.groups[index]
            if group:
                stats, outputs = block_statistics(block, group, calls, self.masks)
                if self.dist is not None and self.dist.active:
                    all_reduce_stats(stats, self.dist)
                stats.fisher = {n: self.fisher[n] for n in group if n in self.fisher}
            else:
                with torch.no_grad():
                    stats, outputs = None, [run_block(block, c) for c in calls]
            visit(index, block, stats)
            if self.sequential and group:
                with torch.no_grad():
                    outputs = [run_block(block, c) for c in calls]
            calls = [with_hidden(c, h) for c, h in zip(calls, outputs, strict=True)]
            if final:
                self.access.commit(index)
            else:
                self.access.release(index)


def _factorize(runner: _Runner, config: FactorizationConfig, tokens: TokenizedText
               ) -> MethodOutcome:
    access, model = runner.access, runner.access.model
    allocator = config.allocator
    probe = None
    if allocator.needs_probe:
        if config.probe == "exact":
            raise ConfigError("probe='exact' runs the whole model once per matrix; the "
                              "layer-wise pipeline measures sensitivities with the block-local "
                              "estimate: use probe='estimate' (or 'auto')")
        probe = BlockProbe(access, tokens, quiet=runner.quiet)
    table = None
    if config.embeddings:
        counts = CalibrationStats()
        vocab = model.get_input_embeddings().num_embeddings
        for batch in runner.batches:
            counts.count_tokens(batch.input_ids, batch.attention_mask, vocab)
        table = EmbeddingPart.build(config, model, counts, probe)
        if probe is not None and table.shared:
            measure_items([table.item], {}, {}, probe, table.trials)
    extra = [table.item] if table is not None and table.shared else []
    items: dict[str, Any] = {}
    two_pass = allocator.needs_spectrum or allocator.needs_probe \
        or allocator.needs_weight_spectrum

    def survey(index: int, block: nn.Module, stats: CalibrationStats | None) -> None:
        group = runner.groups[index]
        if not group:
            return
        decomps, its = decompose_all(config, group, stats, runner.dist)
        if probe is not None:
            measure_items(its, group, decomps, probe, dist=runner.dist)
        items.update((it.name, it) for it in its)

    if two_pass:
        runner.run("layer-wise survey", survey, final=False)
    else:  # the ranks follow from the shapes: no spectra needed
        for group in runner.groups:
            for name, lin in group.items():
                items[name] = config.budget_item(name, lin, torch.zeros(0))
    allocation = allocator.allocate([*items.values(), *extra], config.keep,
                                    constraints=config.constraints)
    reports = []

    def apply(index: int, block: nn.Module, stats: CalibrationStats | None) -> None:
        group = runner.groups[index]
        if group:
            decomps, _ = decompose_all(config, group, stats, runner.dist)
            reports.extend(replace_at(config, model, group, decomps,
                                      [items[n] for n in group], allocation.ranks, stats,
                                      runner.dist))

    runner.run("layer-wise compression", apply, final=True)
    outcome = MethodOutcome(reports, allocation.to_dict(), config.keep,
                            allocation.params_before, allocation.params_after)
    if table is not None:
        outcome = table.finish(config, model, outcome)
    return outcome


def _blockwise(runner: _Runner, config: CompressionConfig, tokens: TokenizedText
               ) -> MethodOutcome:
    indices = [i for i, g in enumerate(runner.groups) if g]
    importance = None
    if config.measures_blocks:
        importance = block_importance(runner.access, tokens, indices, quiet=runner.quiet)
    configs = dict(zip(indices, config.block_configs(len(indices), importance), strict=True))
    outcomes: list[MethodOutcome] = []

    def apply(index: int, block: nn.Module, stats: CalibrationStats | None) -> None:
        if index in configs:
            outcomes.append(configs[index].apply(runner.access.model, runner.groups[index],
                                                 Calibration(stats, None, None)))

    runner.run("layer-wise compression", apply, final=True)
    allocation = _merge([o.allocation for o in outcomes])
    if importance is not None:
        names = [f"{runner.access.prefix}.{i}" for i in indices]
        allocation["block_importance"] = dict(zip(names, importance, strict=True))
        allocation["block_budget"] = "influence"
    return MethodOutcome([r for o in outcomes for r in o.reports], allocation,
                         getattr(config, "keep", None),
                         sum(o.params_before for o in outcomes),
                         sum(o.params_after for o in outcomes))


def _merge(allocations: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-block allocation records as one: dict values are merged, other values kept once
    (a list when the blocks differ)."""
    merged: dict[str, Any] = {}
    for alloc in allocations:
        for key, value in alloc.items():
            if isinstance(value, dict):
                merged.setdefault(key, {}).update(value)
            elif key not in merged:
                merged[key] = value
            elif merged[key] != value:
                if not isinstance(merged[key], list):
                    merged[key] = [merged[key]]
                merged[key].append(value)
    return merged


def block_importance(access: BlockAccess, tokens: TokenizedText, indices: list[int], *,
                     quiet: bool = True) -> list[float]:
    """MoDeGPT's ``1 - mean cos(h_in, h_out)`` over the real tokens of the probe passages,
    for the blocks ``indices``, measured on the stream."""
    from .modegpt import importance_from_hidden

    batches, _, hidden, _ = stream_hidden(access, tokens, quiet=quiet)
    if not batches:
        raise DataError("block importance needs calibration passages")
    return [importance_from_hidden(hidden[i], hidden[i + 1], batches) for i in indices]
