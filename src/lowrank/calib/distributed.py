"""Calibration statistics collected across processes (``torchrun``) with ``torch.distributed``.

Each rank takes a contiguous block of the calibration passages (:func:`shard_passages`),
collects its statistics with :func:`~lowrank.calib.stats.collect_statistics`, and the sums are
all-reduced in float64 (:func:`all_reduce_stats`), so every rank ends with the statistics of
the whole set. Input Grams, absolute and plain sums, token counts and token-id counts are exactly
additive: they equal the single-process statistics up to float64 summation order when each
rank's batches are the single-process batches (passages per rank a multiple of ``batch_size``)
or with ``product_dtype=torch.float64``. Otherwise each batch's float32 ``X^T X`` is rounded
over a different set of rows (about 1e-7 relative on the tiny test models, against 1e-15 with
float64 products). Fisher sums are sums of squared gradients *per micro-batch*: they equal the
single-process ones only when each rank's passage count is a multiple of the Fisher batch size,
so that the ranks' micro-batches are the single-process micro-batches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import DataError
from .data import TokenizedText
from .stats import CalibrationStats, collect_statistics


@dataclass
class Dist:
    """This process's place in a process group: ``rank`` of ``world`` (``group`` None: the
    default group)."""

    rank: int = 0
    world: int = 1
    group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @classmethod
    def from_env(cls, device: str | torch.device | None = None) -> Dist:
        """The initialised default process group; else, under ``torchrun`` (``WORLD_SIZE`` above
        1), a newly initialised one (NCCL for a CUDA ``device``, gloo otherwise, ``env://``);
        else a single process."""
        tdist = torch.distributed
        if tdist.is_available() and tdist.is_initialized():
            return cls(tdist.get_rank(), tdist.get_world_size())
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
        except ValueError as exc:
            raise DataError(f"WORLD_SIZE='{os.environ['WORLD_SIZE']}' is not an integer") from exc
        if world <= 1:
            return cls(0, 1)
        if not tdist.is_available():
            raise DataError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
        cuda = (torch.cuda.is_available()
                and torch.device(device if device is not None else "cpu").type == "cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        tdist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
        return cls(tdist.get_rank(), tdist.get_world_size())


def dist_barrier(dist: Dist) -> None:
    """Wait for every rank (nothing for a single process)."""
    if dist.active:
        torch.distributed.barrier(group=dist.group)


def broadcast_object(obj: Any, dist: Dist) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects; ``obj`` itself for one process)."""
    if not dist.active:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=_global_rank(0, dist), group=dist.group)
    return box[0]


def gather_objects(obj: Any, dist: Dist) -> list | None:
    """Every rank's ``obj`` in rank order on rank 0, None on the others (``[obj]`` alone)."""
    if not dist.active:
        return [obj]
    out: list | None = [None] * dist.world if dist.is_main else None
    torch.distributed.gather_object(obj, out, dst=_global_rank(0, dist), group=dist.group)
    return out


def all_gather_objects(obj: Any, dist: Dist) -> list:
    """Every rank's ``obj`` in rank order, on every rank (``[obj]`` alone)."""
    if not dist.active:
        return [obj]
    out: list = [None] * dist.world
    torch.distributed.all_gather_object(out, obj, group=dist.group)
    return out


def _global_rank(rank: int, dist: Dist) -> int:
    return rank if dist.group is None else torch.distributed.get_global_rank(dist.group, rank)


def owned(names: list[str], dist: Dist | None) -> set[str]:
    """The names this rank works on when ``names`` are spread over the ranks (round robin;
    all of them for a single process)."""
    if dist is None or not dist.active:
        return set(names)
    return set(names[dist.rank::dist.world])


def shard_passages(tokens: TokenizedText, dist: Dist) -> TokenizedText:
    """Rank ``r``'s contiguous block of passages, ``[r*N//W, (r+1)*N//W)`` of ``N``."""
    n = len(tokens)
    if n < dist.world:
        raise DataError(f"{n} calibration passages cannot be split over {dist.world} "
                        "processes: give at least one passage per process")
    lo, hi = dist.rank * n // dist.world, (dist.rank + 1) * n // dist.world
    return TokenizedText(tokens.input_ids[lo:hi], tokens.attention_mask[lo:hi],
                         list(tokens.texts[lo:hi]))


def _layout(stats: CalibrationStats) -> dict:
    """What must agree across ranks before their sums are added."""
    return {
        "module_site": stats.module_site,
        "sites": {k: (tuple(s.gram.shape), tuple(s.abs_sum.shape), s.sum is not None)
                  for k, s in sorted(stats.sites.items())},
        "fisher": {k: (tuple(f.row_sum.shape), tuple(f.col_sum.shape))
                   for k, f in sorted(stats.fisher.items())},
        "token_counts": None if stats.token_counts is None else int(stats.token_counts.numel()),
    }


def all_reduce_stats(stats: CalibrationStats, dist: Dist) -> CalibrationStats:
    """Sum every rank's statistics into ``stats`` in place (float64, sites in sorted order).

    Raises :class:`DataError` on every rank when the ranks collected different modules, sites
    or Fisher weights (nothing is reduced then).
    """
    stats.meta["processes"] = dist.world
    if not dist.active:
        return stats
    layouts = all_gather_objects(_layout(stats), dist)
    counts = [lay.pop("token_counts") for lay in layouts]
    for rank, lay in enumerate(layouts):
        if lay != layouts[0] or (counts[rank] is None) != (counts[0] is None):
            diff = [k for k in lay if lay[k] != layouts[0][k]] or ["token_counts"]
            raise DataError(f"rank {rank} collected statistics that differ from rank 0's in "
                            f"{', '.join(diff)}: every rank must calibrate the same modules")
    stats.__dict__.pop("_root_cache", None)
    device = _comm_device(dist)
    sites = sorted(stats.sites)
    fisher = sorted(stats.fisher)
    for key in sites:
        s = stats.sites[key]
        s.gram = _reduce(s.gram, dist, device)
        s.abs_sum = _reduce(s.abs_sum, dist, device)
        if s.sum is not None:
            s.sum = _reduce(s.sum, dist, device)
    for key in fisher:
        f = stats.fisher[key]
        f.row_sum = _reduce(f.row_sum, dist, device)
        f.col_sum = _reduce(f.col_sum, dist, device)
    integers = torch.tensor([stats.sites[k].tokens for k in sites]
                            + [stats.fisher[k].batches for k in fisher], dtype=torch.int64)
    integers = _reduce(integers, dist, device).tolist()
    for i, key in enumerate(sites):
        stats.sites[key].tokens = int(integers[i])
    for i, key in enumerate(fisher):
        stats.fisher[key].batches = int(integers[len(sites) + i])
    if counts[0] is not None:
        size = max(counts)
        padded = torch.zeros(size, dtype=torch.float64, device=stats.token_counts.device)
        padded[:stats.token_counts.numel()] = stats.token_counts
        stats.token_counts = _reduce(padded, dist, device)
    return stats


def _comm_device(dist: Dist) -> torch.device:
    """Where the backend reduces tensors: the current CUDA device for NCCL, else the CPU."""
    backend = torch.distributed.get_backend(dist.group)
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _reduce(t: torch.Tensor, dist: Dist, device: torch.device) -> torch.Tensor:
    """The sum of ``t`` over ranks (float tensors in float64), on ``t``'s device."""
    dtype = torch.float64 if t.is_floating_point() else t.dtype
    buf = t.to(device=device, dtype=dtype).contiguous()
    torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM, group=dist.group)
    return buf.to(t.device)


def collect_statistics_distributed(
    model: nn.Module,
    modules: dict[str, nn.Linear],
    data: TokenizedText,
    dist: Dist,
    **kwargs: Any,
) -> CalibrationStats:
    """:func:`~lowrank.calib.stats.collect_statistics` over this rank's block of ``data``
    (every rank passes the whole set), summed over the ranks: every rank returns the statistics
    of the whole set. ``kwargs`` go to ``collect_statistics``; see the module note on when
    the Fisher sums equal the single-process ones."""
    shard = shard_passages(data, dist)
    stats = collect_statistics(model, modules, shard, **kwargs)
    all_reduce_stats(stats, dist)
    stats.meta.update({"samples": len(data), "tokens": data.num_tokens, "processes": dist.world})
    return stats
