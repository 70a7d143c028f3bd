"""Several processes (``torchrun``): the process group and the one all-reduce per step.

DistributedDataParallel (gloo on the CPU, nccl on GPUs) averages the gradients; this module
joins the group torchrun describes in the environment and averages the few numbers every rank
must agree on (the losses, a stop request, the time used).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Join the process group torchrun describes in the environment (else: one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world_size, local_rank)


def shutdown(d: Dist) -> None:
    if d.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def reduce_mean(values: list[float | torch.Tensor], d: Dist) -> list[float]:
    """Mean over the processes (every rank gets it: all agree on NaN and on stopping)."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64).detach().cpu() for v in values])
    if d.world_size > 1:
        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = t.to(backend_device)
        dist.all_reduce(t)
        t = t.cpu() / d.world_size
    return t.tolist()


def all_gather(obj, d: Dist) -> list:
    """Every rank's ``obj`` (collective), in rank order."""
    if d.world_size == 1:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.world_size > 1:
        dist.barrier()
