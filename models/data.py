"""Training data (PatchVSR section 4.1): HR clips from a folder, LR made by bilinear down by s ~ U[1, 4]
and back up, captions from sidecar .txt files. Videos are read with imageio-ffmpeg; images are 1-frame clips.

Dimension legend: N frames, H/W pixels; clips are [N, H, W, 3] float in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

VIDEO_EXT = {".mp4", ".mov", ".mkv", ".webm", ".avi"}
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass(frozen=True)
class Clip:
    path: Path
    caption: str  # sidecar <name>.txt, or "" (the fixed prompt is used then)


def find_clips(folder: Path, name: str = "data") -> list[Clip]:
    """The clips of `folder`; `name` is the input that gave it, for the errors (the trainer node's data_folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{name}: '{folder}' is not a folder of videos and images.")
    clips = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in VIDEO_EXT | IMAGE_EXT:
            txt = p.with_suffix(".txt")
            clips.append(Clip(p, txt.read_text().strip() if txt.exists() else ""))
    if not clips:
        raise ValueError(f"{name}: no videos ({sorted(VIDEO_EXT)}) or images ({sorted(IMAGE_EXT)}) in '{folder}'.")
    return clips


def read_clip(clip: Clip, max_frames: int) -> torch.Tensor:
    """[N, H, W, 3] in [0, 1] with N = 1 + 4k <= max_frames (Wan's VAE needs 1 + 4k frames)."""
    import imageio_ffmpeg

    if clip.path.suffix.lower() in IMAGE_EXT:
        from PIL import Image

        return torch.from_numpy(np.asarray(Image.open(clip.path).convert("RGB"), dtype=np.float32) / 255.0)[None]
    reader = imageio_ffmpeg.read_frames(str(clip.path))
    meta = next(reader)
    w, h = meta["size"]
    frames = []
    for raw in reader:
        frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3))
        if len(frames) >= max_frames:
            break
    reader.close()
    n = (len(frames) - 1) // 4 * 4 + 1
    if n < 1:
        raise ValueError(f"data: '{clip.path.name}' has no readable frames.")
    return torch.from_numpy(np.stack(frames[:n]).astype(np.float32) / 255.0)


def degrade(hr: torch.Tensor, scale: float) -> torch.Tensor:
    """[N, H, W, 3] -> LR made as in the paper: bilinear down by `scale`, then back up to H x W."""
    n, h, w, _ = hr.shape
    x = rearrange(hr, "n h w c -> n c h w")
    small = F.interpolate(
        x,
        size=(max(1, round(h / scale)), max(1, round(w / scale))),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    up = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return rearrange(up.clamp(0, 1), "n c h w -> n h w c")


def crop_size(area: int, aspect: float, max_h: int, max_w: int, align: int) -> tuple[int, int]:
    """(h, w) of about `area` cells at aspect w/h, inside max_h x max_w, on multiples of `align`."""
    h = min(max_h, max(align, int(round((area / aspect) ** 0.5 / align)) * align))
    w = min(max_w, max(align, int(round((area * aspect) ** 0.5 / align)) * align))
    return h, w
