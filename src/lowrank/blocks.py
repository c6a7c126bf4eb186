"""Running a model one repeated block at a time: the inputs of the first block, one block's
forward on stored inputs, and the model's own head on stored final hidden states.

This is the mechanism of GPTQ-style sequential pipelines (llm-compressor, SVD-LLM's scripts):
the calibration passages enter the first block once; every block afterwards runs alone on the
previous block's outputs, so only one block needs to be on the compute device at a time.

:class:`BlockAccess` is how a pipeline reaches the blocks: :class:`ResidentBlocks` serves the
blocks of a model already in memory (moved to the compute device while in use);
:class:`lowrank.models.lazy.LazyModel` materialises them from the checkpoint's shards.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, Protocol

import torch
from torch import nn

from .calib.data import TokenBatch
from .errors import ConfigError
from .surgery import ModuleCall, StopForward, block_lists, capture_inputs

#: One batch's call of a block: positional and keyword arguments (hidden states first).
BlockCall = tuple[tuple, dict[str, Any]]


class BlockAccess(Protocol):
    """The repeated blocks of ``model`` (``model.get_submodule(prefix)[i]``), onloaded on
    demand to ``device`` and released after use."""

    model: nn.Module
    prefix: str
    device: torch.device

    def __len__(self) -> int: ...

    def block(self, index: int) -> nn.Module:
        """Block ``index`` with its weights on :attr:`device`."""

    def release(self, index: int) -> None:
        """Done with block ``index`` for now (offload it)."""

    def commit(self, index: int) -> None:
        """Block ``index`` is final (e.g. compressed): keep it as it is, off the device."""


def main_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's first repeated-block list (the transformer layers)."""
    found = block_lists(model)
    if not found:
        raise ConfigError("layer-wise processing needs a model with repeated blocks (a "
                          "ModuleList of transformer layers); this model has none")
    return found[0]


class ResidentBlocks:
    """:class:`BlockAccess` over a model held in memory: a block is moved to ``device`` while
    in use and back to where it was on release (a no-op when they are the same)."""

    def __init__(self, model: nn.Module, device: str | torch.device | None = None) -> None:
        self.model = model
        self.prefix, self._blocks = main_blocks(model)
        home = next(model.parameters()).device
        self.device = torch.device(device) if device is not None else home
        self._home = home

    def __len__(self) -> int:
        return len(self._blocks)

    def block(self, index: int) -> nn.Module:
        return self._blocks[index].to(self.device)

    def release(self, index: int) -> None:
        if self._home != self.device:
            self._blocks[index].to(self._home)

    def commit(self, index: int) -> None:
        self.release(index)


def call_kwargs(model: nn.Module) -> dict[str, Any]:
    """Keyword arguments every calibration forward passes (no KV cache)."""
    params = inspect.signature(model.forward).parameters
    return {"use_cache": False} if "use_cache" in params else {}


def capture_block_inputs(model: nn.Module, blocks: nn.ModuleList,
                         batches: list[TokenBatch]) -> list[BlockCall]:
    """Positional and keyword inputs of the first block for every batch (the forward stops
    there, so later blocks are never run and may live on the meta device)."""
    captured: list[BlockCall] = []

    def keep(_name: str, call: ModuleCall) -> None:
        kwargs = {k: v for k, v in call.kwargs.items() if k not in ("cache", "past_key_values")}
        captured.append((call.args, kwargs))

    extra = call_kwargs(model)
    with capture_inputs({"first": blocks[0]}, keep, stop=True), torch.no_grad():
        for batch in batches:
            with suppress(StopForward):
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **extra)
    if len(captured) != len(batches):
        raise ConfigError("could not capture the inputs of the first transformer block")
    return captured


def block_output(out: Any) -> torch.Tensor:
    """The hidden states a block returns (alone or first in a tuple)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def hidden_of(call: BlockCall) -> torch.Tensor:
    """The hidden states a block call receives."""
    args, kwargs = call
    return args[0] if args else kwargs["hidden_states"]


def run_block(block: nn.Module, call: BlockCall) -> torch.Tensor:
    """``block`` on one stored call; its output hidden states."""
    args, kwargs = call
    return block_output(block(*args, **kwargs))


def with_hidden(call: BlockCall, hidden: torch.Tensor) -> BlockCall:
    """``call`` with its hidden states replaced (the next block's call)."""
    args, kwargs = call
    if args:
        return (hidden, *args[1:]), kwargs
    return (), {**kwargs, "hidden_states": hidden}


class _Replay(nn.Module):
    """Stands in for a block: returns the hidden states it is given (``final`` for the last
    block), in the container type the real block returns."""

    def __init__(self, final: list[torch.Tensor] | None, as_tuple: bool) -> None:
        super().__init__()
        self.final = final
        self.as_tuple = as_tuple
        self.calls = 0

    def forward(self, hidden_states: torch.Tensor | None = None, *args: Any, **kwargs: Any
                ) -> Any:
        hidden = hidden_states if hidden_states is not None else kwargs["hidden_states"]
        if self.final is not None:
            hidden = self.final[self.calls]
            self.calls += 1
        return (hidden,) if self.as_tuple else hidden


@contextmanager
def replaying(model: nn.Module, final: list[torch.Tensor], as_tuple: bool) -> Iterator[None]:
    """Within the block, ``model``'s blocks are skipped and the ``i``-th forward of the model
    continues from ``final[i]`` as the last block's output: the model's own head (final norm,
    pooling, LM head) then runs on stored hidden states, so its gradient reaches them."""
    prefix, blocks = main_blocks(model)
    saved = list(blocks)
    try:
        for i in range(len(blocks)):
            blocks[i] = _Replay(final if i == len(blocks) - 1 else None, as_tuple)
        yield
    finally:
        for i, block in enumerate(saved):
            blocks[i] = block



def forward_stream(access: BlockAccess, batches: list[TokenBatch], label: str = "forward", *,
                   quiet: bool = True
                   ) -> tuple[list[BlockCall], list[list[torch.Tensor]], bool]:
    """``batches`` through every block of ``access``, one block resident at a time: the first
    block's calls, the hidden states entering each block plus the last block's output
    (``len(access) + 1`` lists of one tensor per batch), and whether blocks return tuples."""
    from .utils.progress import progress

    _, blocks = main_blocks(access.model)
    calls = capture_block_inputs(access.model, blocks, batches)
    hidden: list[list[torch.Tensor]] = [[hidden_of(c) for c in calls]]
    as_tuple = False
    with torch.no_grad():
        for i in progress(range(len(access)), label, quiet=quiet):
            block = access.block(i)
            outs = []
            for call, h in zip(calls, hidden[-1], strict=True):
                args, kwargs = with_hidden(call, h)
                raw = block(*args, **kwargs)
                as_tuple = isinstance(raw, (tuple, list))
                outs.append(block_output(raw))
            hidden.append(outs)
            access.release(i)
    return calls, hidden, as_tuple
