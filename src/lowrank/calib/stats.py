"""Additive calibration statistics collected with forward hooks, one pass over the data.

Statistics are sums and counts, so shards from several processes or runs combine by addition
(:meth:`CalibrationStats.merge`). Per input *site* (modules that read the same tensor, such as
query/key/value, share one site): the input Gram ``sum x x^T`` in float64, the per-channel
``sum |x|`` and the token count, padding excluded. Per module, optionally, the diagonal Fisher
(squared gradients of a loss) reduced to row and column sums, for FWSVD (Hsu et al., ICLR 2022).
Per model: how often each input id occurred among the real tokens (``token_counts``), the
lookup frequencies of the embedding table (AFM's embedding compression).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..blocks import BlockCall, run_block
from ..errors import DataError, ModelFileError
from ..linalg import GramRoot, sqrt_gram
from ..surgery import ModuleCall, capture_inputs
from ..utils.progress import progress
from .data import TokenBatch, TokenizedText, masked_rows, split_halves, tokenize

STATS_FORMAT_VERSION = 1


@dataclass
class SiteStats:
    """Sums over the tokens that reached one input site."""

    gram: torch.Tensor  # (n, n) float64, sum of x x^T
    abs_sum: torch.Tensor  # (n,) float64, sum of |x|
    tokens: int = 0
    sum: torch.Tensor | None = None  # (n,) float64, sum of x (output moments follow from it)

    @classmethod
    def empty(cls, n: int, device: torch.device | str) -> SiteStats:
        """Zero sums for an input of width ``n``."""
        return cls(torch.zeros(n, n, dtype=torch.float64, device=device),
                   torch.zeros(n, dtype=torch.float64, device=device), 0,
                   torch.zeros(n, dtype=torch.float64, device=device))

    def add(self, rows: torch.Tensor, site: str, product_dtype: torch.dtype) -> None:
        """Add the real-token input rows ``(tokens, n)`` of one batch; NaN/inf refused."""
        abs_sum = rows.abs().sum(0, dtype=torch.float64)
        if not bool(torch.isfinite(abs_sum).all()):  # a float64 sum of finite rows is finite
            raise DataError(non_finite("calibration inputs", site, rows.dtype))
        xp = rows.to(product_dtype)  # half-precision rows are upcast before the product
        self.gram += (xp.T @ xp).to(torch.float64)
        self.abs_sum += abs_sum
        self.sum += rows.sum(0, dtype=torch.float64)
        self.tokens += int(rows.shape[0])

    @property
    def abs_mean(self) -> torch.Tensor:
        return self.abs_sum / max(self.tokens, 1)

    @property
    def mean(self) -> torch.Tensor:
        if self.sum is None:
            raise DataError("these statistics lack the input sum (collected before it existed)")
        return self.sum / max(self.tokens, 1)


@dataclass
class FisherStats:
    """Squared-gradient sums of one weight, reduced over columns (rows) and rows (cols)."""

    row_sum: torch.Tensor  # (out,) float64
    col_sum: torch.Tensor  # (in,) float64
    batches: int = 0


@dataclass
class CalibrationStats:
    """Statistics for a set of modules: per-site input moments and optional per-module Fisher."""

    sites: dict[str, SiteStats] = field(default_factory=dict)
    module_site: dict[str, str] = field(default_factory=dict)
    fisher: dict[str, FisherStats] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    token_counts: torch.Tensor | None = None  # (vocab,) float64: real tokens per input id

    def count_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     vocab_size: int = 0) -> None:
        """Add the ids of real (unmasked) tokens to :attr:`token_counts` (grown as needed)."""
        ids = input_ids[attention_mask.bool()].reshape(-1).long()
        counts = torch.bincount(ids, minlength=vocab_size).to(torch.float64)
        self.token_counts = _add_counts(self.token_counts, counts)

    def site(self, module_name: str) -> SiteStats:
        try:
            return self.sites[self.module_site[module_name]]
        except KeyError as exc:
            raise DataError(f"no calibration statistics for module '{module_name}'") from exc

    def gram_root(self, module_name: str, floor: float) -> GramRoot:
        """Floored square root of the module's input Gram, computed once per site and floor."""
        key = (self.module_site[module_name], floor)
        cache = self.__dict__.setdefault("_root_cache", {})
        if key not in cache:
            cache[key] = sqrt_gram(self.site(module_name).gram, floor=floor)
        return cache[key]

    def merge(self, other: CalibrationStats) -> CalibrationStats:
        """Add another shard's sums (same modules and sites) into this one, in place."""
        if self.module_site != other.module_site:
            raise DataError("cannot merge statistics collected for different modules")
        self.__dict__.pop("_root_cache", None)
        for key, s in other.sites.items():
            mine = self.sites[key]
            mine.gram += s.gram
            mine.abs_sum += s.abs_sum
            mine.tokens += s.tokens
            if mine.sum is not None and s.sum is not None:
                mine.sum += s.sum
            else:
                mine.sum = None
        for key, f in other.fisher.items():
            if key in self.fisher:
                self.fisher[key].row_sum += f.row_sum
                self.fisher[key].col_sum += f.col_sum
                self.fisher[key].batches += f.batches
            else:
                self.fisher[key] = FisherStats(f.row_sum.clone(), f.col_sum.clone(), f.batches)
        if self.token_counts is not None and other.token_counts is not None:
            self.token_counts = _add_counts(self.token_counts, other.token_counts)
        else:
            self.token_counts = None
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write to one safetensors file (tensors + JSON metadata); reload with :meth:`load`."""
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        for key, s in self.sites.items():
            tensors[f"site/{key}/gram"] = s.gram.contiguous()
            tensors[f"site/{key}/abs_sum"] = s.abs_sum.contiguous()
            if s.sum is not None:
                tensors[f"site/{key}/sum"] = s.sum.contiguous()
        for key, f in self.fisher.items():
            tensors[f"fisher/{key}/row_sum"] = f.row_sum.contiguous()
            tensors[f"fisher/{key}/col_sum"] = f.col_sum.contiguous()
        if self.token_counts is not None:
            tensors["token_counts"] = self.token_counts.contiguous()
        header = {
            "version": STATS_FORMAT_VERSION,
            "module_site": self.module_site,
            "tokens": {k: s.tokens for k, s in self.sites.items()},
            "fisher_batches": {k: f.batches for k, f in self.fisher.items()},
            "meta": self.meta,
        }
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"lowrank_stats": json.dumps(header)})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CalibrationStats:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"statistics file '{path}' does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = json.loads((f.metadata() or {})["lowrank_stats"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise ModelFileError(f"statistics file '{path}' is not a lowrank statistics file: "
                                 f"{exc}") from exc
        if header.get("version", 0) > STATS_FORMAT_VERSION:
            raise ModelFileError(f"statistics file '{path}' has format version "
                                 f"{header['version']}, newer than {STATS_FORMAT_VERSION}")
        stats = cls(module_site=dict(header["module_site"]), meta=header.get("meta", {}))
        for key, tokens in header["tokens"].items():
            stats.sites[key] = SiteStats(tensors[f"site/{key}/gram"],
                                         tensors[f"site/{key}/abs_sum"], int(tokens),
                                         tensors.get(f"site/{key}/sum"))
        for key, batches in header.get("fisher_batches", {}).items():
            stats.fisher[key] = FisherStats(tensors[f"fisher/{key}/row_sum"],
                                            tensors[f"fisher/{key}/col_sum"], int(batches))
        stats.token_counts = tensors.get("token_counts")
        return stats


def _add_counts(total: torch.Tensor | None, counts: torch.Tensor) -> torch.Tensor:
    """``total + counts`` with the shorter vector zero-padded (vocabularies seen so far)."""
    if total is None:
        return counts.clone()
    size = max(total.numel(), counts.numel())
    out = torch.zeros(size, dtype=torch.float64, device=total.device)
    out[:total.numel()] += total
    out[:counts.numel()] += counts.to(total.device, torch.float64)
    return out


def shared_input_sites(
    model: nn.Module, modules: dict[str, nn.Linear], probe: TokenBatch
) -> dict[str, str]:
    """Map each module to a site name: modules that receive the very same input tensor share one.

    Found with one forward pass on ``probe`` that keeps every input alive, so tensor identity is
    reliable (no reuse of freed memory). The site is named after its first module.
    """
    seen: list[tuple[torch.Tensor, str]] = []
    mapping: dict[str, str] = {}

    def assign(name: str, call: ModuleCall) -> None:
        x = call.args[0]
        for other, site in seen:
            if other is x:
                mapping[name] = site
                return
        seen.append((x, name))
        mapping[name] = name

    with capture_inputs(modules, assign), torch.no_grad():
        model(input_ids=probe.input_ids, attention_mask=probe.attention_mask)
    missing = [n for n in modules if n not in mapping]
    if missing:
        raise DataError(f"modules never ran during calibration: {missing[:5]}")
    return mapping


def collect_statistics(
    model: nn.Module,
    modules: dict[str, nn.Linear],
    data: TokenizedText,
    *,
    fisher_loss: str | None = None,
    tokenizer=None,
    batch_size: int = 16,
    fisher_batch_size: int = 8,
    product_dtype: torch.dtype = torch.float32,
    quiet: bool = True,
) -> CalibrationStats:
    """One forward pass over ``data`` collecting per-site input statistics for ``modules``.

    ``fisher_loss`` adds the diagonal Fisher of each module's weight: ``"causal-lm"``
    (next-token loss) or ``"contrastive"`` (in-batch contrastive loss between the two halves of
    each passage, for embedding models without a head; needs ``tokenizer``). Squared gradients
    are taken per micro-batch of ``fisher_batch_size`` passages (recorded in ``meta``).

    Each batch's ``X^T X`` (at most ``batch_size * seq_len`` tokens) is formed in
    ``product_dtype`` and added to a float64 accumulator: float32 products cost about half
    of float64 ones on CPU and changed no measured result (embedding cosine equal to 1e-7 on
    MiniLM); pass ``torch.float64`` for fully float64 statistics. A model run in bfloat16 or
    float16 has its activations upcast to ``product_dtype`` before the product; a batch whose
    inputs (or, for Fisher, gradients) hold NaN/inf, as overflowing float16 activations do,
    raises :class:`DataError` naming the module and dtype: nothing non-finite is accumulated.
    """
    if not modules:
        raise DataError("no modules to collect statistics for")
    device = next(model.parameters()).device
    sites = shared_input_sites(model, modules, next(data.batches(2)).to(device))
    stats = CalibrationStats(module_site=sites)
    for name, site in sites.items():
        if site == name:
            stats.sites[site] = SiteStats.empty(modules[name].in_features, device)
    current_mask: list[torch.Tensor] = []

    def accumulate(site: str, call: ModuleCall) -> None:  # streaming: nothing is stored
        stats.sites[site].add(masked_rows(call.args[0], current_mask[0]), site, product_dtype)

    vocab = int(getattr(_input_embeddings(model), "num_embeddings", 0) or 0)
    with capture_inputs({site: modules[site] for site in stats.sites}, accumulate), \
            torch.no_grad():
        for batch in progress(list(data.batches(batch_size)), "calibration", quiet=quiet):
            batch = batch.to(device)
            current_mask[:] = [batch.attention_mask]
            stats.count_tokens(batch.input_ids, batch.attention_mask, vocab)
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    stats.meta.update({"samples": len(data), "seq_len": int(data.input_ids.shape[1]),
                       "tokens": data.num_tokens, "gram_products": str(product_dtype),
                       "gram_accumulator": "torch.float64"})
    if fisher_loss is not None:
        stats.fisher = collect_fisher(model, modules, data, fisher_loss, tokenizer=tokenizer,
                                      batch_size=fisher_batch_size, quiet=quiet)
        stats.meta.update({"fisher_loss": fisher_loss,
                           "fisher_estimate": f"squared gradients per micro-batch of "
                                              f"{fisher_batch_size} passages"})
    return stats


def block_statistics(
    block: nn.Module,
    modules: dict[str, nn.Linear],
    calls: list[BlockCall],
    masks: list[torch.Tensor],
    *,
    product_dtype: torch.dtype = torch.float32,
) -> tuple[CalibrationStats, list[torch.Tensor]]:
    """:func:`collect_statistics` for the ``modules`` (full names) of one block, run alone on
    its stored inputs ``calls`` (one per batch, ``masks`` their attention masks); also
    returns the block's outputs. Sites and sums are those the whole-model pass collects."""
    stats = CalibrationStats()
    device = next(iter(modules.values())).weight.device
    seen: list[tuple[torch.Tensor, str]] = []
    mask: list[torch.Tensor] = []

    def accumulate(name: str, call: ModuleCall) -> None:
        site = stats.module_site.get(name)
        if site is None:  # first batch: modules fed the very same tensor share a site
            x = call.args[0]
            site = next((s for other, s in seen if other is x), name)
            if site == name:
                seen.append((x, name))
                stats.sites[site] = SiteStats.empty(modules[name].in_features, device)
            stats.module_site[name] = site
        if site == name:
            stats.sites[site].add(masked_rows(call.args[0], mask[0]), site, product_dtype)

    outputs = []
    with capture_inputs(modules, accumulate), torch.no_grad():
        for call, m in zip(calls, masks, strict=True):
            mask[:] = [m]
            outputs.append(run_block(block, call))
            seen.clear()  # the sites are known after the first batch
    missing = [n for n in modules if n not in stats.module_site]
    if missing:
        raise DataError(f"modules never ran during calibration: {missing[:5]}")
    return stats, outputs


def non_finite(what: str, module: str, dtype: torch.dtype) -> str:
    """One line for NaN/inf ``what`` at ``module`` in ``dtype``, with the dtype to try."""
    name = str(dtype).removeprefix("torch.")
    if dtype == torch.float16:
        hint = ("float16 overflows past 65504: load the model with --dtype bfloat16 "
                "(same range as float32) or --dtype float32")
    elif dtype == torch.bfloat16:
        hint = "load the model with --dtype float32"
    else:
        hint = "check the model's weights and the calibration data for NaN/inf"
    return f"{what} of module '{module}' hold NaN/inf in {name}: {hint}"


def _input_embeddings(model: nn.Module) -> nn.Module | None:
    """The model's token-embedding module (Hugging Face ``get_input_embeddings``), if any."""
    try:
        return model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None


def fisher_steps(data: TokenizedText, loss: str, tokenizer: Any, batch_size: int
                 ) -> list[list[TokenBatch]]:
    """The Fisher micro-batches: one batch of ``batch_size`` passages each for the causal-LM
    loss, a (first halves, second halves) pair of batches for the contrastive loss."""
    if loss not in ("causal-lm", "contrastive"):
        raise DataError(f"unknown Fisher loss '{loss}': expected 'causal-lm' or 'contrastive'")
    if loss == "causal-lm":
        return [[b] for b in data.batches(batch_size)]
    if tokenizer is None:
        raise DataError("the contrastive Fisher loss needs the tokenizer")
    first, second = split_halves(data.texts)
    seq_len = int(data.input_ids.shape[1])
    halves = (tokenize(first, tokenizer, seq_len), tokenize(second, tokenizer, seq_len))
    if len(halves[0]) != len(halves[1]):
        raise DataError("some passages are too short to split into two halves")
    return [list(pair) for pair in zip(halves[0].batches(batch_size),
                                       halves[1].batches(batch_size), strict=True)]


def collect_fisher(
    model: nn.Module,
    modules: dict[str, nn.Linear],
    data: TokenizedText,
    loss: str,
    *,
    tokenizer=None,
    batch_size: int = 8,
    quiet: bool = True,
) -> dict[str, FisherStats]:
    """Sum of squared gradients of ``loss`` w.r.t. each module weight, reduced to row/col sums."""
    from ..models.forward import causal_lm_loss, contrastive_loss

    device = next(model.parameters()).device
    steps = fisher_steps(data, loss, tokenizer, batch_size)
    weights = {name: m.weight for name, m in modules.items()}
    saved = {id(p): p.requires_grad for p in model.parameters()}
    out = {name: FisherStats(torch.zeros(w.shape[0], dtype=torch.float64, device=device),
                             torch.zeros(w.shape[1], dtype=torch.float64, device=device))
           for name, w in weights.items()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
        for step in progress(steps, "fisher", quiet=quiet):
            model.zero_grad(set_to_none=True)
            if loss == "contrastive":
                if step[0].input_ids.shape[0] < 2:
                    continue  # a lone passage has no in-batch negatives
                value = contrastive_loss(model, step[0].to(device), step[1].to(device))
            else:
                total, count = causal_lm_loss(model, step[0].to(device))
                value = total / max(count, 1)
            value.backward()
            for name, w in weights.items():
                g2 = w.grad.detach().to(torch.float64) ** 2
                row_sum = g2.sum(1)
                if not bool(torch.isfinite(row_sum).all()):
                    raise DataError(non_finite(f"'{loss}' loss gradients", name, w.grad.dtype))
                out[name].row_sum += row_sum
                out[name].col_sum += g2.sum(0)
                out[name].batches += 1
    finally:
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.requires_grad_(saved[id(p)])
    return out
