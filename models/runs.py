"""A training run on disk: the adapter's name, the run folder beside it (latent cache and checkpoints),
what a run is (its identity: the settings, data and base a checkpoint must match to be resumed), and the
checkpoint files themselves, each written atomically.

Run folder layout: <out>.ckpt/latents/*.latent (models/latents.py), <out>.ckpt/checkpoints/step_*.ckpt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .adapter import FORMAT_VERSION
from .distributed import full_tensor, shard_like
from .train_config import RESUMABLE_FIELDS, TrainConfig

log = logging.getLogger(__name__)

# Files inside a run folder are safetensors but never named .safetensors: the loader lists models/patchvsr
# recursively, and a checkpoint or a latent cache must not be offered as an adapter.
LATENT_SUFFIX = ".latent"  # ComfyUI's own suffix for a safetensors latent
CKPT_SUFFIX = ".ckpt"
# Checkpoints kept per run: the latest, and the one before in case the latest is from a bad moment. A
# 1.3B checkpoint (weights and AdamW moments) is ~10 GB; keeping every one fills a rented node's disk.
KEEP_CHECKPOINTS = 2
START_OVER = "allow overwrite (the node's overwrite input, --overwrite or --restart on the command line)"
MAX_NAME = 100  # characters; leaves room for the suffixes within any file system's 255
_NAME_CHARS = re.compile(r"[\w.\- ]+")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def check_name(name: str, what: str = "adapter_name") -> str:
    """The adapter's name without .safetensors, or a ValueError saying what is wrong with it. The name
    becomes a file and a folder in models/patchvsr, so it must stay a single, portable file name."""
    stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else name
    fix = "Use letters, digits, '_', '-', '.' and spaces, e.g. 'my_adapter'."
    if not stem.strip():
        raise ValueError(f"{what}: the name is empty. {fix}")
    if any(c in stem for c in "/\\:") or stem in (".", ".."):
        raise ValueError(
            f"{what}: '{name}' is a path, not a file name. Give only a name; the file goes in models/patchvsr."
        )
    if len(stem) > MAX_NAME:
        raise ValueError(f"{what}: '{stem[:20]}...' is {len(stem)} characters long; the limit is {MAX_NAME}.")
    if not _NAME_CHARS.fullmatch(stem):
        bad = sorted({c for c in stem if not _NAME_CHARS.fullmatch(c)})
        raise ValueError(f"{what}: '{name}' contains {' '.join(repr(c) for c in bad)}. {fix}")
    if stem[0] in ".- " or stem[-1] in ". " or stem.split(".")[0].lower() in _RESERVED:
        raise ValueError(
            f"{what}: '{name}' starts with '.', '-' or a space, ends with '.' or a space, or is a reserved "
            f"device name (CON, NUL, ...). {fix}"
        )
    return stem


def run_folder(out: Path) -> Path:
    """Latents and checkpoints of the run that writes `out`: beside it, so a host restart (ComfyUI empties
    its temp folder at start-up) or a new machine with the same models folder finds them."""
    return Path(out).with_suffix(CKPT_SUFFIX)


def save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    # A crash or a full disk mid-write leaves a .tmp file, never a truncated file under the real name
    # (a truncated latest checkpoint would make every later resume fail).
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


# -- what a run is ----------------------------------------------------------------------------------------
def run_identity(cfg: TrainConfig, dm, clips: Sequence[str] = (), world_size: int = 1) -> dict[str, str]:
    """What a checkpoint must match to be resumed: every setting that changes the weights, the data folder
    and its clips, the global batch, the adapter file format, and the base model (its dims and a fingerprint
    of its weights)."""
    ident = {k: json.dumps(v) for k, v in asdict(cfg).items() if k not in RESUMABLE_FIELDS}
    ident["data"] = json.dumps(str(Path(cfg.data).resolve()))
    # 8 GPUs x accum 1 and 4 GPUs x accum 2 train the same weights (see Trainer.train_step).
    ident["batch"] = json.dumps(cfg.accum * world_size)
    # A checkpoint of an older adapter format holds weights trained for other inputs (adapter_file.py).
    ident["adapter_format"] = json.dumps(FORMAT_VERSION)
    # The patch embedding and a slice of every block weight: a fine-tune or another format of the base
    # changes them, and hashing slices keeps this cheap on a 14B model.
    parts = [dm.patch_embedding.weight.flatten()] + [p.flatten()[:64] for b in dm.blocks for p in b.parameters()]
    digest = hashlib.sha1()
    for t in parts:  # rounded to bf16: the same base held in fp32, fp16 or bf16 has one fingerprint
        digest.update(t.detach().to(torch.bfloat16).float().cpu().numpy().tobytes())
    ident["model"] = (
        f"dim {dm.dim}, {dm.num_layers} layers, {dm.num_heads} heads, {dm.in_dim} channels, "
        f"weights {digest.hexdigest()[:12]}"
    )
    names = sorted(clips)
    ident["clips"] = f"{len(names)} clips, names {hashlib.sha1(json.dumps(names).encode()).hexdigest()[:12]}"
    return ident


def identity_diff(saved: dict[str, str], now: dict[str, str]) -> list[str]:
    """'field now (checkpoint: then)' for every field that differs."""
    return [
        f"{k} {now.get(k, 'absent')} (checkpoint: {saved.get(k, 'absent')})"
        for k in sorted(set(saved) | set(now))
        if saved.get(k) != now.get(k)
    ]


def mismatch_message(path: Path, diff: list[str]) -> str:
    return (
        f"checkpoint '{path.name}' in '{path.parent.parent}' is from a run with other settings: {'; '.join(diff)}. "
        f"Run with the checkpoint's settings to resume it, choose another adapter name, or {START_OVER} to "
        "start over (its checkpoints are deleted)."
    )


def prepare_run(cfg: TrainConfig, identity: dict[str, str], overwrite: bool = False, restart: bool = False) -> None:
    """Before any caching or training: refuse to replace a finished adapter unless asked, and check the
    run folder's latest checkpoint against this run (resume it, start over, or say what differs)."""
    out = Path(cfg.out)
    if out.exists() and not overwrite:
        raise ValueError(
            f"adapter '{out.name}' already exists in '{out.parent}'. Choose another adapter name, or allow "
            "overwrite (the node's overwrite input, --overwrite on the command line) to replace it."
        )
    found = checkpoints(Path(cfg.work))
    if not found:
        return
    diff = identity_diff(checkpoint_identity(found[-1]), identity)
    if diff and not (overwrite or restart):
        raise ValueError(mismatch_message(found[-1], diff))
    if diff or restart:
        why = "asked to restart" if restart else f"other settings: {'; '.join(diff)}"
        log.warning("starting over: deleting %d checkpoints in '%s' (%s)", len(found), cfg.work, why)
        for p in found:
            p.unlink()


# -- checkpoint files -------------------------------------------------------------------------------------
def checkpoint_path(work: Path, step: int) -> Path:
    return Path(work) / "checkpoints" / f"step_{step:07d}{CKPT_SUFFIX}"


def checkpoints(work: Path) -> list[Path]:
    """The run folder's checkpoints, oldest first."""
    return sorted((Path(work) / "checkpoints").glob(f"step_*{CKPT_SUFFIX}"))


def checkpoint_identity(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("identity", "{}"))


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    """Writes `path` (checkpoint_path) and deletes all but the run's last KEEP_CHECKPOINTS."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(tensors, path, meta)
    for old in checkpoints(path.parent.parent)[:-KEEP_CHECKPOINTS]:
        old.unlink()
    return path


def load_checkpoint(path: Path, identity: dict[str, str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a checkpoint of the run `identity` describes, or a ValueError saying what
    differs. Checked before any tensor is loaded: another rank would otherwise fail as a raw size mismatch,
    another data folder or seed would silently continue the wrong run."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    diff = identity_diff(json.loads(meta.get("identity", "{}")), identity)
    if diff:
        raise ValueError(mismatch_message(Path(path), diff))
    return load_file(str(path)), meta


# The trained state in a checkpoint: adapter.<name> for every adapter weight and buffer, and
# opt.<name>.<exp_avg | exp_avg_sq | step> for every parameter AdamW has stepped.
_ADAMW_STATE = ("exp_avg", "exp_avg_sq", "step")


def gather_state(adapter: nn.Module, opt: torch.optim.Optimizer, keep: bool) -> dict[str, torch.Tensor]:
    """The whole adapter weights and AdamW moments on this rank's CPU where `keep`, else nothing kept (the
    ranks that write nothing). Sharded, every rank must call this, in step: the shards are gathered."""
    tensors = {f"adapter.{k}": full_tensor(v, keep) for k, v in adapter.state_dict().items()}
    for name, p in adapter.named_parameters():
        st = opt.state.get(p, {})
        for k in _ADAMW_STATE:
            if k in st:
                tensors[f"opt.{name}.{k}"] = full_tensor(torch.as_tensor(st[k]), keep)
    return tensors


def scatter_state(tensors: dict[str, torch.Tensor], adapter: nn.Module, opt: torch.optim.Optimizer,
                  path: Path) -> None:  # fmt: skip
    """gather_state's tensors (read from `path`) back into the adapter and AdamW, each rank taking its
    shard where they are sharded."""
    own = dict(adapter.named_parameters()) | dict(adapter.named_buffers())
    saved = {k[len("adapter.") :] for k in tensors if k.startswith("adapter.")}
    if saved != set(own):
        raise ValueError(
            f"checkpoint '{Path(path).name}' holds other adapter weights than this version of the pack "
            f"builds ({len(saved ^ set(own))} differ). Restart the run (--restart or overwrite)."
        )
    with torch.no_grad():
        for name, v in own.items():
            v.copy_(shard_like(tensors[f"adapter.{name}"], v))
    for name, p in adapter.named_parameters():
        if f"opt.{name}.exp_avg" in tensors:
            st = {k: shard_like(tensors[f"opt.{name}.{k}"], p) for k in ("exp_avg", "exp_avg_sq")}
            opt.state[p] = st | {"step": tensors[f"opt.{name}.step"].clone()}
