"""Factorize the convolutions of a CNN: Tucker-2 (Kim et al., ICLR 2016) or CP one-way
filters (Lebedev et al., ICLR 2015), each kernel at the ranks a ``keep`` fraction allows.

Data-free by default. Every selected ``nn.Conv2d`` (groups 1, kernel larger than 1x1) is
replaced by a :class:`~lowrank.nn.tucker_conv.Tucker2Conv2d` or
:class:`~lowrank.nn.cp_conv.CPConv2d` built from its kernel, or left dense where the
factorization would not save parameters.
Fine-tuning afterwards recovers most of the accuracy (see ``benchmarks/tensors.py``).
:func:`allocate_conv_keeps` is the data-aware alternative to a uniform ``keep``: it measures each
layer's output error on sample inputs at several keeps and spends a global parameter budget
where it lowers the error most (greedy marginal analysis, as in budgeted rank allocation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..calib.stats import CalibrationStats
from ..errors import ConfigError, DataError, TargetError
from ..registry import register_method
from .base import CompressionConfig, MethodOutcome, replace_module
from .result import ModuleReport

DECOMPOSITIONS = ("tucker2", "cp")
CONV_ALLOCATORS = ("uniform", "output-error")


def select_convs(model: nn.Module, targets: list[str] | None, ignore: list[str] | None
                 ) -> dict[str, nn.Conv2d]:
    """Plain ``nn.Conv2d`` layers (groups 1, kernel > 1x1, numeric zero padding) selected by
    ``targets`` (default: all) minus ``ignore``, same pattern grammar as linear targets."""
    from ..targets import _matches

    named = dict(model.named_modules())
    for pattern in (targets or []) + (ignore or []):
        if not any(_matches(pattern, n, m) for n, m in named.items() if n):
            raise TargetError(f"pattern '{pattern}' matches no module of the model")

    def hit(patterns: list[str], name: str) -> bool:  # a container selects its contents
        parts = name.split(".")
        prefixes = [".".join(parts[:k]) for k in range(1, len(parts) + 1)]
        return any(_matches(p, pre, named[pre]) for p in patterns for pre in prefixes)

    out = {}
    for name, module in named.items():
        if not isinstance(module, nn.Conv2d) or module.groups != 1 or \
                module.padding_mode != "zeros" or isinstance(module.padding, str) or \
                module.kernel_size == (1, 1):
            continue
        if targets and not hit(targets, name):
            continue
        if ignore and hit(ignore, name):
            continue
        out[name] = module
    return out


@register_method
@dataclass
class ConvFactorize(CompressionConfig):
    """Tucker-2 or CP factorization of each convolution kernel at a uniform ``keep``, or at
    per-layer ``keeps`` (``alloc="output-error"``: from :func:`allocate_conv_keeps`).

    ``targets``/``ignore`` select convolutions (default: every plain Conv2d with a kernel
    larger than 1x1); linear layers are untouched.
    """

    method: ClassVar[str] = "conv"

    keep: float = field(default=0.1, metadata={
        "help": "fraction of each convolution's kernel parameters that remain (0 < keep <= 1)"})
    decomposition: str = field(default="tucker2", metadata={
        "help": "'tucker2' (1x1 -> k x k core -> 1x1, Kim et al. 2016) or 'cp' (1x1 -> "
                "k x 1 -> 1 x k -> 1x1 one-way filters, Lebedev et al. 2015)"})
    alloc: str = field(default="uniform", metadata={
        "help": "'uniform' (every convolution at keep, data-free) or 'output-error' (per-layer "
                "keeps within the same budget from measured output errors on calibration "
                "images: the CLI measures them on its images; in Python pass "
                "keeps=allocate_conv_keeps(model, images, keep))"})
    keeps: dict[str, float] | None = field(default=None, metadata={
        "help": "per-convolution keeps by module name (allocate_conv_keeps); convolutions not "
                "named use keep"})

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
        if self.alloc not in CONV_ALLOCATORS:
            raise ConfigError(f"the 'conv' method allocates with one of "
                              f"{', '.join(CONV_ALLOCATORS)}, got alloc={self.alloc!r}")
        if self.keeps is not None:
            bad = self.keeps if not isinstance(self.keeps, dict) else {
                n: k for n, k in self.keeps.items() if isinstance(k, bool)
                or not isinstance(k, (int, float)) or not 0 < k <= 1}
            if bad:
                raise ConfigError(f"keeps must map module names to keeps in (0, 1], got "
                                  f"{bad!r}")
            self.keeps = {str(n): float(k) for n, k in self.keeps.items()}

    def select_modules(self, model: nn.Module) -> dict[str, nn.Conv2d]:
        """The convolutions this config factorizes (what :func:`lowrank.compress` targets)."""
        convs = select_convs(model, self.targets, self.ignore)
        if not convs:
            raise TargetError("no plain Conv2d layer (groups 1, kernel larger than 1x1) was "
                              "selected: the 'conv' method compresses convolutions")
        return convs

    def factorize_conv(self, conv: nn.Conv2d, keep: float | None = None) -> nn.Module:
        from ..nn.cp_conv import CPConv2d
        from ..nn.tucker_conv import Tucker2Conv2d

        keep = self.keep if keep is None else keep
        if self.decomposition == "tucker2":
            return Tucker2Conv2d.from_conv(conv, keep=keep)
        return CPConv2d.from_conv(conv, keep=keep, random_state=self.seed)

    def apply(self, model: nn.Module, modules: dict[str, nn.Module],
              stats: CalibrationStats | None) -> MethodOutcome:
        convs = self.select_modules(model)
        keeps = self.keeps or {}
        if self.alloc == "output-error" and not keeps:
            raise DataError("alloc='output-error' measures each convolution's output error on "
                            "calibration images: pass keeps=allocate_conv_keeps(model, images, "
                            "keep) (the CLI does this with its images)")
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
            approx = new.weight_product().detach().double()
            err = float((weight - approx).norm() / weight.norm().clamp_min(1e-300))
            rank = getattr(new, "rank", None) or getattr(new, "rank_out", None)
            notes = {"decomposition": self.decomposition, "keep": keeps.get(name, self.keep)}
            if hasattr(new, "rank_in"):
                notes["ranks"] = [new.rank_in, new.rank_out]
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
                        grid: tuple[float, ...] = DEFAULT_KEEP_GRID, seed: int = 0
                        ) -> dict[str, float]:
    """Per-layer keeps with the selected convolutions' factorized kernels summing to at most
    ``keep`` of their dense kernels, chosen from the data.

    For every selected convolution and every keep in ``grid`` the kernel is factorized and
    the relative output error ``||conv(x) - conv_hat(x)|| / ||conv(x)||`` is measured on the
    layer's inputs ``x`` recorded while ``model`` runs on ``inputs``. Starting from the
    smallest keep everywhere, the layer whose move to a larger keep of the grid lowers the
    summed squared error most per added parameter is upgraded while the budget allows. Apply
    the result with :func:`factorize_convs`.
    """
    if decomposition not in DECOMPOSITIONS:
        raise ConfigError(f"decomposition must be one of {', '.join(DECOMPOSITIONS)}, got "
                          f"{decomposition!r}")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ConfigError(f"keep must be in (0, 1] (fraction of parameters kept), got {keep!r}")
    grid = tuple(sorted(float(g) for g in grid))
    if not grid or not 0 < grid[0] or grid[-1] > 1:
        raise ConfigError(f"grid must hold keeps in (0, 1], got {grid!r}")
    convs = select_convs(model, targets, ignore)
    if not convs:
        raise TargetError("no plain Conv2d layer (groups 1, kernel larger than 1x1) was "
                          "selected for rank allocation")
    seen: dict[str, torch.Tensor] = {}
    hooks = [c.register_forward_hook(
        lambda _m, args, _out, name=name: seen.__setitem__(name, args[0].detach()))
        for name, c in convs.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    # options[name] = [(params, squared relative output error), ...] in increasing params
    options: dict[str, list[tuple[int, float]]] = {}
    dense_total = 0
    with torch.no_grad():
        for name, conv in convs.items():
            x = seen[name]
            ref = conv(x)
            dense = conv.weight.numel()
            dense_total += dense
            opts = []
            for k in grid:
                cfg = ConvFactorize(keep=k, decomposition=decomposition, seed=seed)
                new = cfg.factorize_conv(conv)
                params = sum(p.numel() for n, p in new.named_parameters()
                             if not n.endswith("bias"))
                if params >= dense:
                    opts.append((dense, 0.0))
                    break
                err = float((new(x) - ref).norm() / ref.norm().clamp_min(1e-30))
                opts.append((params, err ** 2))
            options[name] = opts
    budget = keep * dense_total
    level = dict.fromkeys(convs, 0)
    used = sum(options[n][0][0] for n in convs)
    if used > budget:
        raise ConfigError(f"keep={keep} is below what the smallest grid keep {grid[0]} needs "
                          f"({used} of {dense_total} kernel parameters): extend grid downwards")
    while True:
        # any larger keep of a layer is a candidate, so that keeps with the same ranks (equal
        # parameters, a plateau) or a non-monotone error do not stop the greedy early
        best, best_gain = None, 0.0
        for n in convs:
            p0, e0 = options[n][level[n]]
            for j in range(level[n] + 1, len(options[n])):
                p1, e1 = options[n][j]
                if used - p0 + p1 > budget:
                    continue
                gain = (e0 - e1) / max(p1 - p0, 1)
                if gain > best_gain:
                    best, best_gain = (n, j), gain
        if best is None:
            break
        n, j = best
        used += options[n][j][0] - options[n][level[n]][0]
        level[n] = j
    return {n: grid[level[n]] for n in convs}


def factorize_convs(model: nn.Module, keeps: dict[str, float], decomposition: str = "tucker2",
                    seed: int = 0) -> dict[str, nn.Module]:
    """Replace each named convolution by its factorization at its own keep (in place);
    convolutions whose factorization would not save parameters stay dense. Returns the new
    modules by name."""
    convs = select_convs(model, list(keeps), None)
    out = {}
    for name, keep in keeps.items():
        cfg = ConvFactorize(keep=keep, decomposition=decomposition, seed=seed)
        new = cfg.factorize_conv(convs[name])
        params = sum(p.numel() for n, p in new.named_parameters() if not n.endswith("bias"))
        if params < convs[name].weight.numel():
            replace_module(model, name, new)
            out[name] = new
    return out


__all__ = ["CONV_ALLOCATORS", "DECOMPOSITIONS", "DEFAULT_KEEP_GRID", "ConvFactorize",
           "allocate_conv_keeps", "factorize_convs", "keep_grid", "select_convs"]
