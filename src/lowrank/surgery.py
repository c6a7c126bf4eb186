"""Model surgery: select a model's modules, swap one for another, watch their calls.

**Selection** (``targets`` / ``ignore``). A pattern is a class name (``"Linear"``), a module
name matched exactly or as a dotted suffix (``"query"`` matches
``encoder.layer.0.attention.self.query``), a regular expression after ``re:`` matched against
the whole name, or (from Python) a callable filter ``(name, module) -> bool``. A pattern that
selects a container selects the layers inside it. What counts as a layer is a
:class:`LayerKind`: :data:`LINEAR` (``nn.Linear``; with no ``targets``, every one inside the
repeated blocks of the model, i.e. the children of a ``ModuleList`` of two or more blocks of
one class: the attention and MLP projections of a transformer, without embeddings, heads or
poolers), :data:`CONV` (plain ``nn.Conv2d``; with no ``targets``, all of them) or
:data:`LINEAR_OR_CONV` (adapters that wrap convolutions too). Compression methods and adapters
declare their kind (``selects``).

**Replacement**: :func:`replace_module` puts a new module where a named one was.

**Input capture**: :func:`capture_inputs` hooks named modules for the duration of a ``with``
block and either stores every call or hands each one to a callback (streaming reductions such
as Gram sums, so memory does not grow with the data); ``stop=True`` ends the forward pass at
the watched call (:class:`StopForward`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from .errors import TargetError

#: A selection pattern: a class name, a dotted module name, ``"re:<regex>"`` or a callable
#: filter ``(name, module) -> bool``.
Pattern = str | Callable[[str, nn.Module], bool]
Patterns = Pattern | Sequence[Pattern] | None


def _as_list(patterns: Patterns) -> list[Pattern]:
    if patterns is None:
        return []
    if isinstance(patterns, str) or callable(patterns):
        return [patterns]
    return list(patterns)


def _matches(pattern: Pattern, name: str, module: nn.Module) -> bool:
    if callable(pattern):
        return bool(pattern(name, module))
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    if type(module).__name__ == pattern:
        return True
    return name == pattern or name.endswith("." + pattern)


def block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The model's repeated-block lists: ``ModuleList``s of two or more blocks of one class."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) >= 2:
            kinds = {type(child) for child in module}
            if len(kinds) == 1 and not isinstance(module[0], nn.Linear):
                found.append((name, module))
    return found


def _block_prefixes(model: nn.Module) -> list[str]:
    return [name + "." if name else "" for name, _ in block_lists(model)]


def default_targets(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside the model's repeated blocks (all linears if it has none)."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    prefixes = _block_prefixes(model)
    if not prefixes:
        return linears
    return {n: m for n, m in linears.items() if any(n.startswith(p) for p in prefixes)}


def _plain_conv(module: nn.Module) -> bool:
    """An ``nn.Conv2d`` that Tucker-2 / CP factorize: groups 1, kernel larger than 1x1,
    numeric zero padding."""
    return isinstance(module, nn.Conv2d) and module.groups == 1 and \
        module.padding_mode == "zeros" and not isinstance(module.padding, str) and \
        module.kernel_size != (1, 1)


@dataclass(frozen=True)
class LayerKind:
    """The layers a method transforms: which modules qualify and the default selection."""

    description: str  # for errors: 'nn.Linear module'
    accepts: Callable[[nn.Module], bool]
    default: Callable[[nn.Module], dict[str, nn.Module]]  # the selection without targets

    def select(self, model: nn.Module, targets: Patterns = None, ignore: Patterns = None
               ) -> dict[str, nn.Module]:
        """The layers of this kind selected by ``targets`` minus ``ignore`` (in model order).

        Raises :class:`TargetError` when a pattern matches nothing (listing the closest names)
        or nothing is selected.
        """
        named = dict(model.named_modules())
        target_list, ignore_list = _as_list(targets), _as_list(ignore)
        for pattern in target_list + ignore_list:
            if isinstance(pattern, str) and pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise TargetError(f"invalid regular expression in '{pattern}': {exc}") \
                        from exc
            if not any(_matches(pattern, n, m) for n, m in named.items() if n):
                raise TargetError(_no_match_message(pattern, named))
        if target_list:
            hits = [n for n, m in named.items()
                    if n and any(_matches(p, n, m) for p in target_list)]
            selected = {n: m for n, m in named.items() if self.accepts(m)
                        and any(n == h or n.startswith(h + ".") for h in hits)}
        else:
            selected = self.default(model)
        if ignore_list:
            dropped = [n for n, m in named.items()
                       if n and any(_matches(p, n, m) for p in ignore_list)]
            selected = {n: m for n, m in selected.items()
                        if not any(n == d or n.startswith(d + ".") for d in dropped)}
        if not selected:
            raise TargetError(f"targets {target_list or 'default'} (ignore {ignore_list}) "
                              f"select no {self.description}: expected at least one")
        return selected


#: Every convolution class an adapter may wrap.
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _linears_and_convs(model: nn.Module) -> dict[str, nn.Module]:
    """The default linear layers plus every convolution, in model order."""
    linears = default_targets(model)
    return {n: m for n, m in model.named_modules() if n in linears or isinstance(m, CONV_TYPES)}


LINEAR = LayerKind("nn.Linear module", lambda m: isinstance(m, nn.Linear), default_targets)
CONV = LayerKind("plain Conv2d layer (groups 1, kernel larger than 1x1)", _plain_conv,
                 lambda model: {n: m for n, m in model.named_modules() if _plain_conv(m)})
LINEAR_OR_CONV = LayerKind("linear or conv module",
                           lambda m: isinstance(m, (nn.Linear, *CONV_TYPES)), _linears_and_convs)


def select_linears(model: nn.Module, targets: Patterns = None, ignore: Patterns = None
                   ) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules selected by ``targets`` minus ``ignore`` (in model order)."""
    return LINEAR.select(model, targets, ignore)


def _no_match_message(pattern: Pattern, named: dict[str, nn.Module]) -> str:
    names = [n for n in named if n]
    if callable(pattern):
        return f"filter {pattern!r} matches no module; module names look like '{names[-1]}'"
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    classes = sorted({type(m).__name__ for m in named.values()})
    probe = pattern[3:] if pattern.startswith("re:") else pattern
    close = difflib.get_close_matches(probe, leaves + classes, n=5, cutoff=0.5)
    if not close:
        close = difflib.get_close_matches(probe, names, n=5, cutoff=0.4)
    if close:
        hint = f"; near misses: {', '.join(close)}"
    else:
        hint = f"; module names look like '{names[-1]}'"
    return f"pattern '{pattern}' matches no module{hint}"


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` was."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@dataclass
class ModuleCall:
    """One call of a watched module: its positional and keyword arguments and, when captured
    with ``outputs=True``, what it returned."""

    args: tuple
    kwargs: dict[str, Any]
    output: Any = None


class StopForward(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a ``stop=True`` capture right after the watched call to end the forward pass
    there; run the pass under ``contextlib.suppress(StopForward)``."""


@contextmanager
def capture_inputs(modules: Mapping[str, nn.Module],
                   on_call: Callable[[str, ModuleCall], None] | None = None, *,
                   outputs: bool = False, stop: bool = False
                   ) -> Iterator[dict[str, list[ModuleCall]]]:
    """Watch the calls of ``modules`` (by name) inside the ``with`` block; the hooks are
    removed on exit, also on errors.

    Without ``on_call`` every call is stored: the block gets ``{name: [ModuleCall, ...]}``.
    With ``on_call``, ``on_call(name, call)`` runs at each call and nothing is stored (the
    dict stays empty), so a streaming reduction keeps constant memory. The hooks run before
    each call (forward pre-hooks) or, with ``outputs=True``, after it with its output.
    ``stop=True`` raises :class:`StopForward` right after recording a call.
    """
    calls: dict[str, list[ModuleCall]] = {name: [] for name in modules}

    def record(name: str, call: ModuleCall) -> None:
        if on_call is None:
            calls[name].append(call)
        else:
            on_call(name, call)
        if stop:
            raise StopForward

    def make_hook(name: str) -> Callable[..., None]:
        if outputs:
            return lambda _m, args, kwargs, output: record(name, ModuleCall(args, kwargs, output))
        return lambda _m, args, kwargs: record(name, ModuleCall(args, kwargs))

    handles = [module.register_forward_hook(make_hook(name), with_kwargs=True) if outputs
               else module.register_forward_pre_hook(make_hook(name), with_kwargs=True)
               for name, module in modules.items()]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()
