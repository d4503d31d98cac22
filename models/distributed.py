"""Data-parallel training over several processes (one per GPU) through torch.distributed, started by
`torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). One process without
torchrun is a world of one and every collective here is a no-op, so the trainer has one code path.

NCCL on CUDA, gloo on the CPU (the tests run two CPU processes with gloo).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# Latent caching runs before training and each rank encodes its share of the clips; a rank that finishes
# first waits at a barrier for the slowest. NCCL's default 10 minutes is too short for a big data folder.
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The rank that writes files (checkpoints, the adapter) and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1 and dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def sum(self, values: list[float], device) -> list[float]:
        """Element-wise sum of a few floats over the ranks (float64: loss sums must not lose digits)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=_comm_device(device))
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool, device) -> bool:
        """True on every rank when it is True on one (a cancel must stop all ranks at the same step)."""
        return self.sum([float(flag)], device)[0] > 0

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank (picklable)."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


ONE = World()  # one process, no torch.distributed


def _comm_device(device) -> torch.device:
    """NCCL moves CUDA tensors only, gloo CPU tensors only."""
    return torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")


def from_env() -> World:
    """The world torchrun describes in the environment; a world of one without it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(world: World) -> None:
    """Joins the process group (before any collective); each rank uses the GPU of its local rank."""
    if world.size <= 1 or dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)


def close(world: World) -> None:
    if world.active:
        dist.destroy_process_group()
