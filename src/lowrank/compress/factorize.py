"""Budgeted low-rank factorization: the shared flow of SVD, ASVD, FWSVD and SVD-LLM.

A :class:`FactorizationConfig` only says how to weight one matrix (:meth:`decompose` returns
the weighted SVD, from which factors at every rank follow); this module decomposes every
targeted matrix, lets the allocator spend the global budget over their spectra, and swaps in
:class:`LowRankLinear` modules (or leaves a matrix dense where a factorization would not save).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..alloc import ALLOCATORS, BudgetItem, RankAllocator, RankConstraints
from ..calib.data import TokenizedText
from ..calib.distributed import Dist, all_gather_objects, owned
from ..calib.stats import CalibrationStats
from ..errors import ConfigError, DataError
from ..linalg import GramRoot, WhitenedSVD
from ..linalg.output_pca import affine_output_error
from ..nn import LowRankLinear
from ..surgery import replace_module
from .base import Calibration, CompressionConfig, MethodOutcome, output_error
from .embedding import (
    AffineBudgetItem,
    embedding_pca,
    held_out_trial,
    input_embedding,
    rank_for_keep,
    replace_embedding,
)
from .estimate import BlockProbe
from .probe import PROBE_PASSAGES, OutputProbe
from .result import ModuleReport

#: How the sensitivity allocators measure a matrix (``FactorizationConfig.probe``).
PROBES = ("auto", "exact", "estimate")
#: ``probe='auto'`` runs the exact probes while they cost at most this many calibration passes.
EXACT_PROBE_PASSES = 2


@dataclass
class FactorizationConfig(CompressionConfig):
    """A low-rank factorization under a global parameter budget (``keep``, ``alloc``)."""

    keep: float = field(default=0.8, metadata={
        "help": "fraction of the targeted parameters that remain (0 < keep <= 1); keep=0.8 is "
                "what the literature calls a 20% compression ratio"})
    alloc: str = field(default="uniform", metadata={
        "help": "a registered rank allocator (lowrank.ALLOCATORS): 'uniform' (same keep for "
                "every matrix), 'energy' (same fraction of weighted spectral energy per "
                "matrix, bisected to the budget), 'welore' (one global threshold on min-max "
                "normalised weight spectra, data-free), 'svdllm-v2' (per-type groups weighted "
                "by 1/log truncation loss), 'sensitivity' / 'sensitivity-sqrt' (measured end to "
                "end on calibration text)"})
    min_keep: float = field(default=0.0, metadata={
        "help": "lower bound on each matrix's kept fraction of its own dense parameters "
                "(0 <= min_keep <= max_keep); a dense matrix keeps 1"})
    max_keep: float = field(default=1.0, metadata={
        "help": "upper bound on each matrix's kept fraction of its own dense parameters "
                "(0 < max_keep <= 1); below 1 every matrix is factorized"})
    rank_align: int = field(default=1, metadata={
        "help": "ranks are multiples of this (e.g. 8 for GEMM-friendly shapes); a matrix "
                "whose aligned rank would not save parameters stays dense"})
    embeddings: bool = field(default=False, metadata={
        "help": "also compress the input-embedding table (model.get_input_embeddings()) by the "
                "token-frequency-weighted PCA of its rows; its parameters join the budget"})
    embedding_keep: float | None = field(default=None, metadata={
        "help": "fraction of the embedding table's parameters kept; default: the table shares "
                "one allocation with the linears under keep"})
    probe: str = field(default="auto", metadata={
        "help": "how the sensitivity allocators measure a matrix: 'exact' (one whole-model "
                "forward of the probe passages per matrix), 'estimate' (block-local forward "
                "weighted by gradient energies, lowrank.compress.estimate), or 'auto' (exact "
                "only while it costs at most two calibration passes)"})
    embedding_floor: float = field(default=0.1, metadata={
        "help": "weight of the uniform distribution over the vocabulary mixed into the "
                "calibration token frequencies (0: frequencies only, 1: plain PCA of the "
                "table), so unseen tokens still shape the basis"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)):
            raise ConfigError(f"keep must be a number in (0, 1], got {self.keep!r}")
        if not 0 < float(self.keep) <= 1:
            raise ConfigError(
                f"keep must be in (0, 1] (fraction of parameters kept), got {self.keep}")
        self.keep = float(self.keep)
        if not issubclass(ALLOCATORS.get(self.alloc), RankAllocator):
            ranks = [n for n in ALLOCATORS.names()
                     if issubclass(ALLOCATORS.get(n), RankAllocator)]
            raise ConfigError(f"allocator '{self.alloc}' does not allocate ranks: method "
                              f"'{self.method}' takes one of {', '.join(ranks)}")
        for name in ("min_keep", "max_keep"):
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(self, name, float(value))
        try:  # RankConstraints validates the bounds and the alignment
            self.constraints  # noqa: B018
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("align must", "rank_align must", 1)) from None
        self._validate_embedding_fields()
        if self.probe not in PROBES:
            raise ConfigError(f"probe must be one of {', '.join(PROBES)}, got {self.probe!r}")

    def _validate_embedding_fields(self) -> None:
        if not isinstance(self.embeddings, bool):
            raise ConfigError(f"embeddings must be true or false, got {self.embeddings!r}")
        if self.embedding_keep is not None:
            if isinstance(self.embedding_keep, bool) or not isinstance(
                    self.embedding_keep, (int, float)) or not 0 < self.embedding_keep <= 1:
                raise ConfigError(f"embedding_keep must be a number in (0, 1] (fraction of the "
                                  f"table's parameters kept) or None, got "
                                  f"{self.embedding_keep!r}")
            self.embedding_keep = float(self.embedding_keep)
        if isinstance(self.embedding_floor, bool) or not isinstance(
                self.embedding_floor, (int, float)) or not 0 <= self.embedding_floor <= 1:
            raise ConfigError(f"embedding_floor must be in [0, 1], got "
                              f"{self.embedding_floor!r}")
        self.embedding_floor = float(self.embedding_floor)

    @property
    def allocator(self) -> RankAllocator:
        return ALLOCATORS.get(self.alloc)()

    @property
    def constraints(self) -> RankConstraints:
        """The per-matrix bounds every allocator honours (``min_keep``, ``max_keep``, align)."""
        return RankConstraints(self.min_keep, self.max_keep, self.rank_align)

    @abstractmethod
    def decompose(self, weight: torch.Tensor, name: str,
                  stats: CalibrationStats | None) -> WhitenedSVD:
        """Weighted SVD of ``weight`` (out x in, float64) for module ``name``.

        Any object with the members of :class:`WhitenedSVD` serves: ``spectrum``,
        ``tail_energy(rank)``, ``factors(rank)``, ``right`` (a :class:`GramRoot` adds its
        conditioning to the report), and ``bias(rank, bias)``, the factorized layer's bias,
        which moves only where ``shifts_bias`` says so (output-side methods re-centre it).
        """

    def budget_item(self, name: str, module: nn.Linear, spectrum: torch.Tensor) -> BudgetItem:
        """The allocator's view of one matrix: its parameter cost at every rank."""
        return BudgetItem(name, module.out_features, module.in_features,
                          module.bias is not None, spectrum)

    def apply(self, model: nn.Module, modules: dict[str, nn.Module],
              calib: Calibration) -> MethodOutcome:
        output = None
        if self.allocator.needs_probe:
            if calib.tokens is None:
                raise DataError(f"the '{self.alloc}' allocator measures the model end to end: "
                                "pass calibration text (data=...) to compress()")
            output = self.sensitivity_probe(model, modules, calib.tokens)
        if self.embeddings:
            return factorize_with_embedding(self, model, modules, calib.stats, output,
                                            calib.dist)
        return factorize(self, model, modules, calib.stats, output, dist=calib.dist)

    def sensitivity_probe(self, model: nn.Module, modules: dict[str, nn.Module],
                          tokens: TokenizedText) -> Callable[[str, nn.Module], float]:
        """The end-to-end measurement of the sensitivity allocators (``probe``): the exact
        :class:`OutputProbe`, or the block-local :class:`BlockProbe` estimate where exact
        probes would cost more than :data:`EXACT_PROBE_PASSES` calibration passes."""
        if self.resolved_probe(len(modules) + int(self.embeddings), len(tokens)) == "exact":
            return OutputProbe(model, tokens)
        from ..blocks import ResidentBlocks

        return BlockProbe(ResidentBlocks(model), tokens)

    def resolved_probe(self, matrices: int, passages: int) -> str:
        """``'exact'`` or ``'estimate'`` for ``probe='auto'`` with this many probed matrices and
        calibration passages (the exact probes cost ``matrices`` forwards of
        ``PROBE_PASSAGES`` passages each)."""
        if self.probe != "auto":
            return self.probe
        exact_cost = matrices * min(PROBE_PASSAGES, passages)
        return "exact" if exact_cost <= EXACT_PROBE_PASSES * passages else "estimate"


def _low_rank(lin: nn.Linear, dec: Any, rank: int) -> LowRankLinear:
    """``lin`` at ``rank`` from its decomposition (the decomposition's bias when it sets one)."""
    B, A = dec.factors(rank)
    bias = dec.bias(rank, None if lin.bias is None else lin.bias.detach())
    return LowRankLinear.from_factors(B.to(lin.weight.dtype), A.to(lin.weight.dtype),
                                      bias).to(lin.weight.device)


#: A module's end-to-end change when replaced: ``output(name, replacement)``.
OutputMeasure = Callable[[str, nn.Module], float]


def decompose_all(config: FactorizationConfig, modules: dict[str, nn.Module],
                  stats: CalibrationStats | None, dist: Dist | None = None
                  ) -> tuple[dict[str, Any], list[BudgetItem]]:
    """Each module's weighted decomposition and its :class:`BudgetItem` (with the plain weight
    spectrum when the allocator reads it). With ``dist``, each rank decomposes its share of
    the modules (:func:`~lowrank.calib.distributed.owned`) and every rank gets every item."""
    needs_weight = config.allocator.needs_weight_spectrum
    mine = owned(list(modules), dist)
    decomps, found = {}, {}
    for name, lin in modules.items():
        if name not in mine:
            continue
        weight = lin.weight.detach().to(torch.float64)
        decomps[name] = config.decompose(weight, name, stats)
        found[name] = config.budget_item(name, lin, decomps[name].spectrum)
        if needs_weight:
            found[name].weight_spectrum = torch.linalg.svdvals(weight)
    if dist is not None and dist.active:
        for part in all_gather_objects({n: _to_cpu(it) for n, it in found.items()}, dist):
            found.update(part)
    return decomps, [found[name] for name in modules]


def _to_cpu(item: BudgetItem) -> BudgetItem:
    """``item`` with its spectra on the host (to send it to the other ranks)."""
    item.spectrum = item.spectrum.cpu()
    if item.weight_spectrum is not None:
        item.weight_spectrum = item.weight_spectrum.cpu()
    return item


def measure_items(items: Sequence[BudgetItem], modules: dict[str, nn.Module],
                  decomps: dict[str, Any], output: OutputMeasure,
                  trials: Mapping[str, Callable[[int], nn.Module]] | None = None,
                  dist: Dist | None = None) -> None:
    """Set each item's ``sensitivity``: ``output`` of the matrix truncated to its probe rank
    (``trials[name](rank)`` builds the truncated module of items that are not linears). With
    ``dist``, each rank measures the matrices it decomposed and every rank gets every value."""
    from ..alloc.sensitivity import probe_rank

    trials = dict(trials or {})
    measured = {}
    for item in items:
        if item.sensitivity is None and (item.name in trials or item.name in decomps):
            rank = probe_rank(item)
            trial = trials[item.name](rank) if item.name in trials else \
                _low_rank(modules[item.name], decomps[item.name], rank)
            measured[item.name] = output(item.name, trial)
    if dist is not None and dist.active:
        for part in all_gather_objects(measured, dist):
            measured.update(part)
    for item in items:
        if item.name in measured:
            item.sensitivity = measured[item.name]


def factorize(config: FactorizationConfig, model: nn.Module, modules: dict[str, nn.Module],
              stats: CalibrationStats | None, output: OutputMeasure | None = None,
              extra_items: Sequence[BudgetItem] = (),
              extra_trials: Mapping[str, Callable[[int], nn.Module]] | None = None,
              dist: Dist | None = None) -> MethodOutcome:
    """Decompose, allocate under ``config.keep``, and replace; one report per module.

    ``output`` measures the end-to-end change of a truncated matrix for allocators that need a
    probe. ``extra_items`` (not linears: an embedding table) share the allocation: their ranks
    are in the outcome's allocation and their parameters in its totals; the caller replaces
    them; ``extra_trials[name](rank)`` builds one at a rank for the probe. ``dist`` spreads
    the decompositions over the ranks of a process group (every rank ends with the whole
    compressed model).
    """
    decomps, items = decompose_all(config, modules, stats, dist)
    if output is not None:
        measure_items([*items, *extra_items], modules, decomps, output, extra_trials, dist)
    allocation = config.allocator.allocate([*items, *extra_items], config.keep,
                                           constraints=config.constraints)
    reports = replace_at(config, model, modules, decomps, items, allocation.ranks, stats, dist)
    return MethodOutcome(reports, allocation.to_dict(), config.keep,
                         allocation.params_before, allocation.params_after)


def replace_at(config: FactorizationConfig, model: nn.Module, modules: dict[str, nn.Module],
               decomps: dict[str, Any], items: Sequence[BudgetItem],
               ranks: Mapping[str, int | None], stats: CalibrationStats | None,
               dist: Dist | None = None) -> list[ModuleReport]:
    """Swap in each module at its allocated rank (``None``: left dense); one report each.
    With ``dist``, each rank builds the modules it decomposed and sends their factors and
    reports to the others."""
    reports = []
    built: dict[str, tuple] = {}
    for item in items:
        if item.name not in decomps:
            continue
        name, lin = item.name, modules[item.name]
        rank = ranks[name]
        weight = lin.weight.detach().to(torch.float64)
        spectrum = decomps[name].spectrum
        energy_total = float((spectrum.double() ** 2).sum()) or 1.0
        notes: dict[str, Any] = {}
        bias_shift = None
        if rank is None:
            approx, energy_kept = weight, 1.0
        else:
            new = _low_rank(lin, decomps[name], rank)
            if decomps[name].shifts_bias:
                old = torch.zeros_like(weight[:, 0]) if lin.bias is None else lin.bias.detach()
                bias_shift = old.to(torch.float64) - new.bias.detach().to(torch.float64)
            if not (torch.isfinite(new.A).all() and torch.isfinite(new.B).all()):
                raise DataError(f"decomposition of '{name}' produced non-finite factors; "
                                "the module was left unchanged")
            approx = new.dense_weight().detach().to(torch.float64)
            energy_kept = 1.0 - decomps[name].tail_energy(rank) / energy_total
            replace_module(model, name, new)
        right = decomps[name].right
        if isinstance(right, GramRoot):
            notes["gram_eigenvalues_floored"] = right.num_floored
            notes["gram_condition"] = right.condition
        out_err = None
        if stats is not None and bias_shift is not None:
            site = stats.site(name)
            out_err = affine_output_error(weight, approx, bias_shift, site.gram, site.sum,
                                          site.tokens)
        elif stats is not None:
            out_err = output_error(weight, approx, stats.site(name).gram.to(weight.device))
        reports.append(ModuleReport(
            name=name, out_features=item.out_features, in_features=item.in_features,
            rank=rank, params_before=item.dense_cost(), params_after=item.cost(rank),
            rel_output_error=out_err,
            rel_weight_error=float((weight - approx).norm() / weight.norm().clamp_min(1e-300)),
            energy_kept=energy_kept, spectrum=[float(s) for s in spectrum], notes=notes,
        ))
        if rank is not None:
            layer = model.get_submodule(name)
            built[name] = tuple(None if t is None else t.detach().cpu()
                                for t in (layer.B, layer.A, layer.bias))
    if dist is None or not dist.active:
        return reports
    by_name = {r.name: r for r in reports}
    for part in all_gather_objects((built, by_name), dist):
        for name, (B, A, bias) in part[0].items():
            if name not in built:
                lin = modules[name]
                new = LowRankLinear.from_factors(B, A, bias).to(lin.weight.device)
                replace_module(model, name, new)
        by_name.update(part[1])
    return [by_name[item.name] for item in items]


def factorize_with_embedding(config: FactorizationConfig, model: nn.Module,
                             modules: dict[str, nn.Module], stats: CalibrationStats | None,
                             output: OutputMeasure | None = None, dist: Dist | None = None
                             ) -> MethodOutcome:
    """:func:`factorize` with the input-embedding table in the budget (shared allocation, or
    its own ``embedding_keep``; :mod:`lowrank.compress.embedding`)."""
    table = EmbeddingPart.build(config, model, stats, output)
    if table.shared:
        outcome = factorize(config, model, modules, stats, output, extra_items=[table.item],
                            extra_trials=table.trials, dist=dist)
    else:
        outcome = factorize(config, model, modules, stats, output, dist=dist)
    return table.finish(config, model, outcome)


@dataclass
class EmbeddingPart:
    """The input-embedding table as one more budget item (``embeddings=True``): its
    frequency-weighted PCA, item and probe trial, and how it joins the outcome."""

    name: str
    embedding: nn.Embedding
    pca: Any
    counts: torch.Tensor
    item: AffineBudgetItem
    trials: dict[str, Callable[[int], nn.Module]]
    shared: bool  # shares the allocation of the linears (no own embedding_keep)

    @classmethod
    def build(cls, config: FactorizationConfig, model: nn.Module,
              stats: CalibrationStats | None, output: OutputMeasure | None) -> EmbeddingPart:
        name, embedding = input_embedding(model)
        pca, counts = embedding_pca(embedding, stats, config.embedding_floor)
        item = AffineBudgetItem(name, embedding.embedding_dim, embedding.num_embeddings, True,
                                pca.spectrum, dense_bias=False)
        if config.allocator.needs_weight_spectrum:
            item.weight_spectrum = torch.linalg.svdvals(pca.table)
        shared = config.embedding_keep is None
        trials = {} if output is None or not shared else {
            name: held_out_trial(embedding, counts, config.embedding_floor, output.passages)}
        return cls(name, embedding, pca, counts, item, trials, shared)

    def finish(self, config: FactorizationConfig, model: nn.Module, outcome: MethodOutcome
               ) -> MethodOutcome:
        """Replace the table at its rank and add it to ``outcome`` (first report)."""
        item = self.item
        if self.shared:
            rank = outcome.allocation["ranks"][self.name]
        else:
            rank = rank_for_keep(item, config.embedding_keep, config.rank_align)
            linears_before = outcome.params_before
            outcome.params_before += item.dense_cost()
            outcome.params_after += item.cost(rank)
            outcome.keep_target = (config.keep * linears_before
                                   + config.embedding_keep * item.dense_cost()
                                   ) / outcome.params_before
        report = replace_embedding(model, self.name, self.embedding, self.pca, self.counts,
                                   rank, item, config.embedding_floor)
        outcome.reports.insert(0, report)
        outcome.allocation["embedding"] = {
            "name": self.name, "rank": rank, "keep_target": config.embedding_keep,
            "params_before": report.params_before, "params_after": report.params_after}
        return outcome
