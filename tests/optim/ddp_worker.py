"""Worker for the 2-process torchrun test: DDP (gloo, CPU) with GaLoreAdamW and SLTrain layers.

Run as ``torchrun --nproc_per_node 2 ddp_worker.py OUT.json``. Each rank trains on its half
of every global batch; rank 0 also trains an undistributed copy on the whole global batch and
writes the largest parameter difference across ranks and against that single-process run.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lowrank.errors import LowRankError
from lowrank.nn.sparse_lowrank import SparseLowRankLinear
from lowrank.optim import GaLoreAdamW


def build() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(),
                          nn.Linear(24, 4))
    model[2] = SparseLowRankLinear.from_linear(model[2], rank=4, density=0.1, seed=7,
                                               name="2", init="random")
    return model


def optimizer(model: nn.Module) -> GaLoreAdamW:
    mats = [model[0].weight, model[4].weight]
    ids = {id(p) for p in mats}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return GaLoreAdamW([{"params": rest},
                        {"params": mats[:1], "rank": 3, "update_proj_gap": 3, "basis": "rsvd"},
                        {"params": mats[1:], "rank": 2, "update_proj_gap": 2, "basis": "dct"}],
                       lr=1e-2)


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    gen = torch.Generator().manual_seed(123)
    batches = [(torch.randn(8, 16, generator=gen), torch.randn(8, 4, generator=gen))
               for _ in range(8)]
    model = DistributedDataParallel(build())
    opt = optimizer(model.module)
    refused = False
    try:
        opt.enable_per_layer(model)
    except LowRankError:
        refused = True
    per = 8 // world
    for x, y in batches:
        xs, ys = x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
        loss = (model(xs) - ys).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    flat = torch.cat([p.detach().reshape(-1) for p in model.module.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        single = build()
        sopt = optimizer(single)
        for x, y in batches:
            (single(x) - y).pow(2).mean().backward()
            sopt.step()
            sopt.zero_grad(set_to_none=True)
        sflat = torch.cat([p.detach().reshape(-1) for p in single.parameters()])
        out = {"world": world, "refused_per_layer": refused,
               "max_rank_diff": max((g - gathered[0]).abs().max().item() for g in gathered),
               "max_single_diff": (gathered[0] - sflat).abs().max().item(),
               "moved": (gathered[0] - torch.cat([p.detach().reshape(-1)
                                                  for p in build().parameters()])).abs().max()
               .item(),
               "supports_equal": bool(torch.equal(model.module[2].indices,
                                                  build()[2].indices))}
        with open(sys.argv[1], "w") as fh:
            json.dump(out, fh)
    # Both ranks leave together: a rank that tears gloo down while its peer is still working
    # (rank 0 runs the single-process reference above) can abort in gloo's teardown.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
