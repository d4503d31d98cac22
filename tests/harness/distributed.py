"""Runs the trainer in several CPU processes joined by torch.distributed (gloo), as torchrun would start
them on a GPU node: each process gets RANK / WORLD_SIZE / MASTER_* in its environment and calls the same
models.train code as one process does.

The worker lives here, not in a test module, so the spawned interpreters can import it by name.
"""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
import signal
import socket
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch.multiprocessing as mp

_CRASH_LOG = None  # the open file faulthandler writes to, in a worker
# The longest the ranks may take, about 10 times what the test's jobs need on a loaded 2-core CI machine. A
# rank blocked in a collective its peer never joins would otherwise hold the test for gloo's timeout (2
# hours, models/distributed.TIMEOUT) and the CI run with it; past this, the ranks write their Python stacks
# and are killed, and the test fails with those stacks.
DEADLINE_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, size: int, port: int, jobs: list[dict], train: list[str], val: list[str], out: str) -> None:
    # A crash in native code (gloo, a kernel) kills the process with only a signal name; this writes each
    # thread's Python stack to a file first, which run() reports. The file stays open while the process lives.
    global _CRASH_LOG
    _CRASH_LOG = open(Path(out, f"rank{rank}.crash"), "w")  # noqa: SIM115
    faulthandler.enable(_CRASH_LOG, all_threads=True)
    faulthandler.register(signal.SIGUSR1, _CRASH_LOG, all_threads=True)  # run() asks for them at its deadline
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")  # fmt: skip
    import torch

    torch.set_num_threads(1)
    import models.runs
    import models.train as mt
    from harness.inprocess import tiny_wan, training_mode
    from models import distributed
    from models.latents import load_sample
    from models.train_config import TrainConfig

    # Which files each rank writes: every write of a checkpoint (models/runs.py) or an adapter
    # (models/train.py) goes through these two.
    writes = []
    save_atomic, save_adapter = models.runs.save_atomic, mt.save_adapter

    def spy_atomic(tensors, path, meta):
        writes.append(Path(path).name)
        return save_atomic(tensors, path, meta)

    def spy_adapter(adapter, path, meta=None):
        writes.append(Path(path).name)
        return save_adapter(adapter, path, meta)

    models.runs.save_atomic, mt.save_adapter = spy_atomic, spy_adapter
    world = distributed.from_env()
    distributed.init(world)
    results = []
    try:
        train_samples = [load_sample(Path(p)) for p in train]
        val_samples = [load_sample(Path(p)) for p in val]
        for job in jobs:  # one process group for all jobs: starting processes is the slow part
            writes.clear()
            with training_mode():
                trainer = mt.Trainer(TrainConfig(**job), tiny_wan(layers=2), text, world=world)
                try:
                    history = trainer.run(train_samples, val_samples)
                    trainer.export()
                finally:
                    trainer.close()
            results.append({"history": history, "writes": list(writes)})
        Path(out, f"rank{rank}.json").write_text(json.dumps(results))
        # As train() ends (models/train.py): no rank tears its end of the group down while the other may
        # still be in the last collective.
        world.barrier()
    finally:
        distributed.close(world)
    # As the command line tool ends a torchrun rank (models/distributed.py end_process says why); a rank
    # that raised never gets here, and torch.multiprocessing reports its exception.
    distributed.end_process(world, 0)


def text(caption: str):
    import torch

    return torch.zeros(1, 1, 4096)


class RankCrashed(Exception):
    """A rank died of a signal it was not sent: a crash in native code."""

    def __init__(self, rank: int, signal_name: str):
        super().__init__(f"rank {rank} died of {signal_name}")
        self.rank = rank


def _start(args: tuple, size: int, out: Path) -> None:
    """The ranks, joined. RankCrashed when one died of a signal, mp.start_processes' exceptions for any other
    failure, a TimeoutError (with every rank's stacks) for ranks still running at DEADLINE_S."""
    ctx = mp.start_processes(_worker, args=args, nprocs=size, start_method="spawn", join=False)
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=max(0.0, deadline - time.monotonic())):
            if time.monotonic() < deadline:
                continue  # a rank finished, the others are still running
            alive = [p for p in ctx.processes if p.is_alive()]
            for p in alive:
                os.kill(p.pid, signal.SIGUSR1)
            time.sleep(2)  # faulthandler writes from a signal handler; give it the moment it needs
            for p in alive:
                p.kill()
                p.join()
            stacks = "\n".join(_stacks(out, r) for r in range(size))
            raise TimeoutError(f"ranks {[ctx.processes.index(p) for p in alive]} still running after {DEADLINE_S} "
                               f"s; their stacks:\n{stacks}")  # fmt: skip
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
        # join() has stopped and reaped every rank. The peer of a crashed rank fails too (gloo: connection
        # closed), and its Python exception may be the one reported: the run crashed when any rank died of a
        # signal other than the SIGTERM / SIGKILL that join() sends to the ranks still running.
        codes = [p.exitcode for p in ctx.processes]
        crashed = [
            r for r, c in enumerate(codes) if c is not None and c < 0 and -c not in (signal.SIGTERM, signal.SIGKILL)
        ]
        if crashed:
            raise RankCrashed(crashed[0], signal.Signals(-codes[crashed[0]]).name) from e
        raise


def _stacks(out: Path, rank: int) -> str:
    """What faulthandler wrote for `rank`, innermost frames first (the head of a deep stack is the cause)."""
    crash = out / f"rank{rank}.crash"
    return f"rank {rank}: " + (crash.read_text()[:4000] if crash.exists() else "(no stack written)")


def run(jobs: list, train: list[Path], val: list[Path], out: Path, size: int = 2) -> list[list[dict]]:
    """Trains each TrainConfig in `jobs`, in turn, in `size` processes; returns [rank][job] -> the job's
    history and the names of the files that rank wrote."""
    for attempt in (1, 2):
        out.mkdir(parents=True, exist_ok=True)
        args = (size, free_port(), [asdict(j) for j in jobs], [str(p) for p in train], [str(p) for p in val], str(out))
        try:
            _start(args, size, out)
            break
        except RankCrashed as e:
            # A Python exception in a rank fails at once, and so does the deadline. A crash in native code is
            # not the trainer's to fix and its cause is not proven (end_process removes the one hazard found:
            # native threads still running while the process exits); it is rerun once from scratch
            # (checkpoints wiped, or the rerun would resume them) with its stacks in the warning, and a
            # second one fails the test.
            if attempt == 2:
                raise AssertionError(f"{e}, twice. {_stacks(out, e.rank)}") from e
            warnings.warn(f"{e}; the jobs run once more. {_stacks(out, e.rank)}", RuntimeWarning, stacklevel=2)
            for path in [out, *(Path(j.work) for j in jobs)]:
                shutil.rmtree(path, ignore_errors=True)
            for j in jobs:
                Path(j.out).unlink(missing_ok=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(size)]
