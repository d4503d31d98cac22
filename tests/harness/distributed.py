"""Runs the trainer in several CPU processes joined by torch.distributed (gloo), as torchrun would start
them on a GPU node: each process gets RANK / WORLD_SIZE / MASTER_* in its environment and calls the same
models.train code as one process does.

The worker lives here, not in a test module, so the spawned interpreters can import it by name.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict
from pathlib import Path

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, size: int, port: int, jobs: list[dict], train: list[str], val: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")  # fmt: skip
    import torch

    torch.set_num_threads(1)
    import models.train as mt
    from harness.inprocess import tiny_wan, training_mode
    from models import distributed

    # Which files each rank writes: every write of a checkpoint or an adapter goes through these two.
    writes = []
    save_atomic, save_adapter = mt._save_atomic, mt.save_adapter

    def spy_atomic(tensors, path, meta):
        writes.append(Path(path).name)
        return save_atomic(tensors, path, meta)

    def spy_adapter(adapter, path, meta=None):
        writes.append(Path(path).name)
        return save_adapter(adapter, path, meta)

    mt._save_atomic, mt.save_adapter = spy_atomic, spy_adapter
    world = distributed.from_env()
    distributed.init(world)
    results = []
    try:
        train_samples = [mt.load_sample(Path(p)) for p in train]
        val_samples = [mt.load_sample(Path(p)) for p in val]
        for job in jobs:  # one process group for all jobs: starting processes is the slow part
            writes.clear()
            with training_mode():
                trainer = mt.Trainer(mt.TrainConfig(**job), tiny_wan(layers=2), text, world=world)
                try:
                    history = trainer.run(train_samples, val_samples)
                    trainer.export()
                finally:
                    trainer.close()
            results.append({"history": history, "writes": list(writes)})
        Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        distributed.close(world)


def text(caption: str):
    import torch

    return torch.zeros(1, 1, 4096)


def run(jobs: list, train: list[Path], val: list[Path], out: Path, size: int = 2) -> list[list[dict]]:
    """Trains each TrainConfig in `jobs`, in turn, in `size` processes; returns [rank][job] -> the job's
    history and the names of the files that rank wrote."""
    out.mkdir(parents=True, exist_ok=True)
    args = (size, free_port(), [asdict(j) for j in jobs], [str(p) for p in train], [str(p) for p in val], str(out))
    mp.start_processes(_worker, args=args, nprocs=size, start_method="spawn")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(size)]
