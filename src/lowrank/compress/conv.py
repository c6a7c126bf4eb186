"""Factorize the convolutions of a CNN: Tucker-2 (Kim et al., ICLR 2016) or CP one-way
filters (Lebedev et al., ICLR 2015), each kernel at the ranks a ``keep`` fraction allows.

Data-free by default. Every selected ``nn.Conv2d`` (groups 1, kernel larger than 1x1) is
replaced by a :class:`~lowrank.nn.tucker_conv.Tucker2Conv2d` or
:class:`~lowrank.nn.cp_conv.CPConv2d` built from its kernel, or left dense where the
factorization would not save parameters.
Fine-tuning afterwards recovers most of the accuracy (see ``benchmarks/tensors.py``).
``alloc="output-error"`` is the data-aware alternative to a uniform ``keep``
(:func:`allocate_conv_keeps`, run by :func:`lowrank.compress` on calibration images): it
measures each layer's output error at several keeps and lets the registered ``output-error``
allocator spend the global parameter budget where it lowers the error most.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..alloc import ALLOCATORS, Allocator, Menu, OptionAllocator, OutputErrorAllocator
from ..errors import ConfigError, DataError, TargetError
from ..nn.cp_conv import CPConv2d
from ..nn.tucker_conv import Tucker2Conv2d
from ..surgery import CONV, LayerKind, capture_inputs, replace_module
from .base import METHODS, Calibration, CompressionConfig, MethodOutcome
from .result import ModuleReport

DECOMPOSITIONS = ("tucker2", "cp")
#: Calibration images the output-error allocation runs on (it keeps every convolution's input
#: in memory at once).
ALLOC_IMAGES = 64


@METHODS.register
@dataclass
class ConvFactorize(CompressionConfig):
    """Tucker-2 or CP factorization of each convolution kernel at a uniform ``keep``, or at
    per-layer ``keeps`` (given, or from the ``output-error`` allocator on calibration images).

    ``targets``/``ignore`` select convolutions (default: every plain Conv2d with a kernel
    larger than 1x1); linear layers are untouched.
    """

    method: ClassVar[str] = "conv"
    selects: ClassVar[LayerKind] = CONV

    keep: float = field(default=0.1, metadata={
        "help": "fraction of each convolution's kernel parameters that remain (0 < keep <= 1)"})
    decomposition: str = field(default="tucker2", metadata={
        "help": "'tucker2' (1x1 -> k x k core -> 1x1, Kim et al. 2016) or 'cp' (1x1 -> "
                "k x 1 -> 1 x k -> 1x1 one-way filters, Lebedev et al. 2015)"})
    alloc: str = field(default="uniform", metadata={
        "help": "registered allocator: 'uniform' (every convolution at keep, data-free) or "
                "'output-error' (per-layer keeps within the same budget from measured output "
                "errors on calibration images: lowrank.compress(model, config, data=images))"})
    keeps: dict[str, float] | None = field(default=None, metadata={
        "help": "per-convolution keeps by module name (e.g. a previous run's allocation); "
                "convolutions not named use keep; given keeps are used instead of "
                "allocating"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)) or \
                not 0 < float(self.keep) <= 1:
            raise ConfigError(f"keep must be in (0, 1] (fraction of parameters kept), got "
                              f"{self.keep!r}")
        self.keep = float(self.keep)
        if self.decomposition not in DECOMPOSITIONS:
            raise ConfigError(f"decomposition must be one of {', '.join(DECOMPOSITIONS)}, got "
                              f"{self.decomposition!r}")
        allocator = ALLOCATORS.get(self.alloc)
        if allocator.name != "uniform" and not issubclass(allocator, OptionAllocator):
            choices = ["uniform", *(n for n in ALLOCATORS.names()
                                    if issubclass(ALLOCATORS.get(n), OptionAllocator))]
            raise ConfigError(f"the 'conv' method allocates with one of {', '.join(choices)}, "
                              f"got alloc={self.alloc!r}")
        if self.keeps is not None:
            bad = self.keeps if not isinstance(self.keeps, dict) else {
                n: k for n, k in self.keeps.items() if isinstance(k, bool)
                or not isinstance(k, (int, float)) or not 0 < k <= 1}
            if bad:
                raise ConfigError(f"keeps must map module names to keeps in (0, 1], got "
                                  f"{bad!r}")
            self.keeps = {str(n): float(k) for n, k in self.keeps.items()}

    @property
    def allocator(self) -> Allocator:
        return ALLOCATORS.get(self.alloc)()

    @property
    def measures_keeps(self) -> bool:
        """Whether per-layer keeps are measured on calibration images (an option allocator
        and no given ``keeps``)."""
        return isinstance(self.allocator, OptionAllocator) and not self.keeps

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"images"}) if self.measures_keeps else frozenset()

    def factorize_conv(self, conv: nn.Conv2d, keep: float | None = None
                       ) -> Tucker2Conv2d | CPConv2d:
        keep = self.keep if keep is None else keep
        if self.decomposition == "tucker2":
            return Tucker2Conv2d.from_conv(conv, keep=keep)
        return CPConv2d.from_conv(conv, keep=keep, random_state=self.seed)

    def apply(self, model: nn.Module, modules: dict[str, nn.Module],
              calib: Calibration) -> MethodOutcome:
        convs = modules
        keeps = self.keeps or {}
        if self.measures_keeps:
            if calib.images is None:
                raise DataError(f"alloc='{self.alloc}' measures each convolution's output "
                                "error on calibration images: pass data=<images tensor> to "
                                "lowrank.compress, or keeps=...")
            keeps = allocate_conv_keeps(model, calib.images[:ALLOC_IMAGES], self.keep,
                                        self.decomposition, targets=self.targets,
                                        ignore=self.ignore, grid=keep_grid(self.keep),
                                        seed=self.seed, allocator=self.allocator)
        unknown = sorted(set(keeps) - set(convs))
        if unknown:
            raise TargetError(f"keeps name modules that are not selected convolutions: "
                              f"{', '.join(unknown[:3])}")
        reports, before, after = [], 0, 0
        for name, conv in convs.items():
            dense = conv.weight.numel()
            new = self.factorize_conv(conv, keeps.get(name))
            kernel_params = sum(p.numel() for n, p in new.named_parameters()
                                if not n.endswith("bias"))
            weight = conv.weight.detach().double()
            approx = new.dense_weight().detach().double()
            err = float((weight - approx).norm() / weight.norm().clamp_min(1e-300))
            notes = {"decomposition": self.decomposition, "keep": keeps.get(name, self.keep)}
            if isinstance(new, Tucker2Conv2d):
                rank = new.rank_out
                notes["ranks"] = [new.rank_in, new.rank_out]
            else:
                rank = new.rank
            if kernel_params >= dense:
                rank, kernel_params, err = None, dense, 0.0
                notes["left_dense"] = "factorization would not save parameters"
            else:
                replace_module(model, name, new)
            out_c, in_c, kh, kw = conv.weight.shape
            reports.append(ModuleReport(
                name=name, out_features=out_c, in_features=in_c * kh * kw, rank=rank,
                params_before=dense, params_after=kernel_params, rel_output_error=None,
                rel_weight_error=err, energy_kept=max(0.0, 1.0 - err ** 2), notes=notes))
            before += dense
            after += kernel_params
        allocation = {"allocator": self.alloc, "keep": self.keep}
        if keeps:
            allocation["keeps"] = dict(keeps)
        return MethodOutcome(reports, allocation, self.keep, before, after)


DEFAULT_KEEP_GRID = (0.02, 0.03, 0.05, 0.07, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3)


def keep_grid(keep: float) -> tuple[float, ...]:
    """Candidate per-layer keeps around a budget ``keep``: from ``keep / 4`` to ``3 keep`` in
    ten steps, clipped to (0, 1] (the default grid stops at 0.3, too low for larger keeps)."""
    factors = (0.25, 0.4, 0.55, 0.7, 0.85, 1.0, 1.25, 1.6, 2.2, 3.0)
    grid = {min(1.0, round(keep * f, 6)) for f in factors}
    return tuple(sorted(g for g in grid if g > 0))


def allocate_conv_keeps(model: nn.Module, inputs: torch.Tensor, keep: float,
                        decomposition: str = "tucker2", *, targets: list[str] | None = None,
                        ignore: list[str] | None = None,
                        grid: tuple[float, ...] = DEFAULT_KEEP_GRID, seed: int = 0,
                        allocator: OptionAllocator | None = None) -> dict[str, float]:
    """Per-layer keeps with the selected convolutions' factorized kernels summing to at most
    ``keep`` of their dense kernels, chosen from the data.

    For every selected convolution and every keep in ``grid`` the kernel is factorized and
    the squared relative output error ``||conv(x) - conv_hat(x)||^2 / ||conv(x)||^2`` is
    measured on the layer's inputs ``x`` recorded while ``model`` runs on ``inputs``; the
    ``allocator`` (default: the registered ``output-error`` greedy) picks one keep per layer.
    Apply the result with :func:`factorize_convs` or ``ConvFactorize(keeps=...)``.
    """
    if decomposition not in DECOMPOSITIONS:
        raise ConfigError(f"decomposition must be one of {', '.join(DECOMPOSITIONS)}, got "
                          f"{decomposition!r}")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ConfigError(f"keep must be in (0, 1] (fraction of parameters kept), got {keep!r}")
    grid = tuple(sorted(float(g) for g in grid))
    if not grid or not 0 < grid[0] or grid[-1] > 1:
        raise ConfigError(f"grid must hold keeps in (0, 1], got {grid!r}")
    convs = CONV.select(model, targets, ignore)
    was_training = model.training
    model.eval()
    try:
        with capture_inputs(convs) as calls, torch.no_grad():
            model(inputs)
    finally:
        model.train(was_training)
    menus = []
    with torch.no_grad():
        for name, conv in convs.items():
            x = calls[name][-1].args[0].detach()
            ref = conv(x)
            dense = conv.weight.numel()
            menu = Menu(name, dense, [], [])
            for k in grid:
                cfg = ConvFactorize(keep=k, decomposition=decomposition, seed=seed)
                new = cfg.factorize_conv(conv)
                params = sum(p.numel() for n, p in new.named_parameters()
                             if not n.endswith("bias"))
                if params >= dense:  # this keep and the larger ones leave the layer dense
                    menu.costs.append(dense)
                    menu.errors.append(0.0)
                    break
                err = float((new(x) - ref).norm() / ref.norm().clamp_min(1e-30))
                menu.costs.append(params)
                menu.errors.append(err ** 2)
            menus.append(menu)
    choice = (allocator or OutputErrorAllocator()).choose(menus, keep)
    return {name: grid[choice[name]] for name in convs}


def factorize_convs(model: nn.Module, keeps: dict[str, float], decomposition: str = "tucker2",
                    seed: int = 0) -> dict[str, nn.Module]:
    """Replace each named convolution by its factorization at its own keep (in place);
    convolutions whose factorization would not save parameters stay dense. Returns the new
    modules by name."""
    convs = CONV.select(model, list(keeps))
    out = {}
    for name, keep in keeps.items():
        cfg = ConvFactorize(keep=keep, decomposition=decomposition, seed=seed)
        new = cfg.factorize_conv(convs[name])
        params = sum(p.numel() for n, p in new.named_parameters() if not n.endswith("bias"))
        if params < convs[name].weight.numel():
            replace_module(model, name, new)
            out[name] = new
    return out


__all__ = ["ALLOC_IMAGES", "DECOMPOSITIONS", "DEFAULT_KEEP_GRID", "ConvFactorize",
           "allocate_conv_keeps", "factorize_convs", "keep_grid"]
