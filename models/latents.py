"""The trainer's latent cache (PatchVSR section 4.1): every clip's HR latent, the latents of its LR
versions (down-scaled by s ~ U[cfg.scale]) and of the LR clip resized to the crop size (the global view),
encoded once into the run folder and reused by every later run with the same data and settings.

Dimension legend: C latent channels, T latent frames, H/W latent rows/columns.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .data import Clip, degrade, read_clip
from .distributed import ONE, World
from .runs import LATENT_SUFFIX, save_atomic
from .train_config import TrainConfig
from .video import resize_frames

log = logging.getLogger(__name__)
# encode(pixels [N, H, W, 3] in [0, 1]) -> [1, C, T, h, w] latent in the DiT's input space
EncodeFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Sample:
    hr: torch.Tensor  # [1, C, T, H, W]
    lr: torch.Tensor  # [1, C, T, H, W] latent of the degraded clip at full size
    glob: torch.Tensor  # [1, C, T, gh, gw] latent of the degraded clip resized to the crop size
    scale: float
    caption: str


def _short_reason(e: Exception) -> str:
    """ffmpeg's error is a 3 KB banner; its last line says what is wrong."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    last = re.sub(r"^\[[^\]]*\]\s*", "", lines[-1]) if lines else type(e).__name__
    return last if len(last) <= 120 else last[:117] + "..."


def cache_latents(cfg: TrainConfig, clips: list[Clip], encode: EncodeFn, on_clip=None, check=None,
                  world: World = ONE) -> list[Path]:  # fmt: skip
    """Encodes every clip's HR, LR variants and global view once; later runs reuse the files. A clip that
    cannot be read is skipped with one line; only a folder with no readable clip fails. With several
    processes each encodes every world.size-th clip, then all list the files written."""
    cache = Path(cfg.work) / "latents"
    cache.mkdir(parents=True, exist_ok=True)
    gen = random.Random(cfg.seed)
    per_clip = []
    for i, clip in enumerate(clips):
        if check:  # a cancel between clips: the finished ones are on disk (written atomically) and reused
            check()
        # Drawn before the clip is read so one unreadable clip does not change the others' LR scales.
        # A fixed factor (--scale S S) makes every variant the same LR clip: one is encoded, not copies.
        scales = [gen.uniform(*cfg.scale) for _ in range(cfg.variants if cfg.scale[0] != cfg.scale[1] else 1)]
        # A stable digest (not hash(), which changes per process) so a restarted run finds its cache.
        # Everything the cached tensors depend on: a changed --scale must not reuse LR made at the old one.
        ident = (
            f"{clip.path.resolve()}|{clip.path.stat().st_mtime_ns}|{cfg.max_frames}|{cfg.crop_px}|{cfg.seed}"
            f"|{cfg.scale}|{cfg.variants}"
        )
        key = f"{clip.path.stem}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}"
        variants = [cache / f"{key}-v{v}{LATENT_SUFFIX}" for v in range(len(scales))]
        per_clip.append(variants)
        if i % world.size == world.rank and not all(p.exists() for p in variants):
            try:
                hr = read_clip(clip, cfg.max_frames)
            except (OSError, RuntimeError, ValueError) as e:  # ffmpeg/PIL failures, no frames
                log.warning("skipped '%s': %s", clip.path.name, _short_reason(e))
                if on_clip:
                    on_clip(i + 1, len(clips))
                continue
            hr_latent = None  # every variant shares the HR clip, the largest encode: once per clip
            for path, s in zip(variants, scales):
                if not path.exists():
                    if hr_latent is None:
                        hr_latent = encode(hr)
                    lr = degrade(hr, s)
                    tensors = {"hr": hr_latent, "lr": encode(lr), "glob": encode(resize_frames(lr, cfg.crop_px))}
                    tensors = {k: t.float().contiguous().cpu() for k, t in tensors.items()}
                    save_atomic(tensors, path, {"scale": str(s), "caption": clip.caption})
        if on_clip:
            on_clip(i + 1, len(clips))
    world.barrier()  # every rank's share is on disk
    # A clip is readable when all its variants are on disk (written by this run or an earlier one).
    readable = [v for v in per_clip if all(p.exists() for p in v)]
    paths = [p for v in readable for p in v]
    skipped = len(clips) - len(readable)
    if skipped and not readable:
        raise ValueError(
            f"data: none of the {len(clips)} clips in '{cfg.data}' could be read (see the lines above). "
            "Give a folder of videos ffmpeg can decode, or images."
        )
    if skipped and world.main:
        log.warning("skipped %d of %d clips that could not be read; training on %d", skipped, len(clips),
                    len(readable))  # fmt: skip
    return paths


def load_sample(path: Path) -> Sample:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    t = load_file(str(path))
    return Sample(t["hr"], t["lr"], t["glob"], float(meta["scale"]), meta.get("caption", ""))


def split(paths: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Held-out clips (all variants of a clip, <clip key>-v<k>, go to one side)."""
    clips = sorted({p.name.rsplit("-v", 1)[0] for p in paths})
    random.Random(seed).shuffle(clips)
    n_val = max(1, round(len(clips) * val_fraction)) if len(clips) > 1 else 0
    val = set(clips[:n_val])
    return [p for p in paths if p.name.rsplit("-v", 1)[0] not in val], [
        p for p in paths if p.name.rsplit("-v", 1)[0] in val
    ]
