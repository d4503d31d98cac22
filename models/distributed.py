"""Data-parallel training over several processes (one per GPU) through torch.distributed, started by
`torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). One process without
torchrun is a world of one and every collective here is a no-op, so the trainer has one code path.

NCCL on CUDA, gloo on the CPU (the tests run two CPU processes with gloo).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn

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


def end_process(world: World, code: int) -> NoReturn:
    """Ends the process with exit status `code`, once its files are written and closed and close() has run.

    A rank of a multi-process run ends at once (os._exit), without the interpreter's finalisation and the
    C++ static destructors. Once FSDP2 has run, the process group outlives destroy_process_group (torch
    keeps it: DTensor's caches hold its DeviceMesh, and references invisible to Python's GC hold the group),
    so its native threads, gloo's and on rank 0 the TCPStore server's, still run at exit. Static destructors
    running under live threads is undefined behaviour: a crash after the work is done, which torchrun would
    report as a failed run."""
    sys.stdout.flush()
    sys.stderr.flush()
    if world.size > 1:
        logging.shutdown()  # os._exit skips atexit, where logging flushes its handlers
        os._exit(code)
    sys.exit(code)


# -- data parallel training ---------------------------------------------------------------------------------
def wrap(module: nn.Module, world: World, device, shard: bool, units: Iterable[nn.Module] = ()) -> nn.Module:
    """`module` as the ranks train it together: itself in a world of one; DDP (every rank holds all
    weights, gradients averaged) or, with `shard`, FSDP2 with each of `units` sharded on its own and the
    rest of `module` in its root unit (gathered from forward to backward)."""
    if not world.active:
        return module
    if not shard:
        from torch.nn.parallel import DistributedDataParallel

        # Gradients as views into DDP's buckets: no second fp32 copy of them (4 bytes per trained weight).
        return DistributedDataParallel(module, gradient_as_bucket_view=True)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(torch.device(device).type, (world.size,))
    # FSDP2 warns that modules returning views may skip an all-gather in the backward if the view is changed
    # in place. The trainer's units use their outputs out of place only; tests/unit/test_train.py checks that
    # sharded training follows one process's losses.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module


def full_tensor(t: torch.Tensor, keep: bool = True) -> torch.Tensor | None:
    """The whole tensor of a (possibly FSDP-sharded) parameter or optimiser state, on the CPU; None where
    not `keep` (the ranks that write nothing: 8 CPU copies of a 14B adapter's state would not fit a node's
    memory). A collective for a sharded one: every rank calls it, in the same order."""
    from torch.distributed.tensor import DTensor

    t = t.full_tensor() if isinstance(t, DTensor) else t
    return t.detach().cpu().contiguous() if keep else None


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` (from a checkpoint) laid out as `like`: this rank's shard of it where `like` is sharded."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    full = full.to(device=like.device, dtype=like.dtype)
    if isinstance(like, DTensor):  # every rank holds the whole tensor: each keeps its shard, no traffic
        return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)
    return full
