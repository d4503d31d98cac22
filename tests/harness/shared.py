"""Results that do not depend on the test host, built once per checkout and reused by every host.

Training an adapter does not depend on the ComfyUI host (the proofs' adapters trained on both hosts agreed
within 0.02 dB), so a CI run trains each proof's adapter once, on whichever host gets there first, and both
hosts sample it. A result is keyed by its configuration, the pack's trainer code and the files it was
trained from, so a change to any of them trains again; it is built in a folder of its own and moved into
place only when complete, so an interrupted run never leaves half a result to reuse.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from .paths import REPO

SHARED = REPO / ".work" / "shared"
# What an adapter's training runs besides its inputs: the pack's code (the pure-PyTorch core, the trainer's
# command line and the node glue it loads the models with). Callers add the harness file that drives it.
TRAINING_CODE = (REPO / "models", REPO / "tools", REPO / "nodes")


def fingerprint(parts: Iterable[str | Path]) -> str:
    """sha1 of strings and of files' contents (folders: their .py files, recursively, in order, with their paths
    in the repository). A file named on its own counts by its name and contents only: each host keeps its models
    in a folder of its own, and the same model there must give the same key."""
    h = hashlib.sha1()
    for part in parts:
        if isinstance(part, Path) and part.is_dir():
            for f in sorted(part.rglob("*.py")):
                h.update(str(f.relative_to(REPO)).encode())
                h.update(f.read_bytes())
        elif isinstance(part, Path):
            h.update(part.name.encode())
            if part.exists():
                h.update(_contents(part))
        else:
            h.update(part.encode())
    return h.hexdigest()[:12]


def _contents(path: Path) -> bytes:
    """A file's bytes; a safetensors file's with its header's keys sorted: the hosts' ComfyUI versions write the
    same tiny model's metadata in different orders (same tensors, other bytes)."""
    data = path.read_bytes()
    if path.suffix != ".safetensors":
        return data
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    return json.dumps(header, sort_keys=True).encode() + data[8 + n :]


def built_once(name: str, key_parts: Iterable[str | Path], build: Callable[[Path], None]) -> Path:
    """The folder `name`-<key> under .work/shared, made by build(folder) unless a complete one exists. Hosts
    tested at the same time take turns (a lock per result): the second waits for the first's and reuses it."""
    final = SHARED / f"{name}-{fingerprint([*key_parts, *TRAINING_CODE])}"
    SHARED.mkdir(parents=True, exist_ok=True)
    with open(final.with_name(f"{final.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if (final / ".complete").exists():
            return final
        partial = final.with_name(f"{final.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        build(partial)
        (partial / ".complete").touch()
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        return final
