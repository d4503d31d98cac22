"""Clips with camera moves cut from still photographs: the training and held-out data of the tiny models.

Pure PyTorch and Pillow. Dimension legend: N frames, C channels (RGB), H rows, W columns.

The photographs are scikit-image's bundled samples (skimage/data, all public domain or CC0: see
tests/tiny/README.md). Two are held out from every training run and committed under tests/assets/heldout/
so the demo needs no scikit-image.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ASSETS = Path(__file__).resolve().parents[1] / "assets"
HELD_OUT = ("chelsea.png", "coffee.png")  # never trained on; the demo's and the proofs' clips come from these
# The training photographs (file in skimage/data -> licence as skimage's docstrings state it).
TRAIN = {
    "astronaut.png": "public domain (NASA)",
    "rocket.jpg": "public domain (SpaceX)",
    "hubble_deep_field.jpg": "public domain (NASA)",
    "retina.jpg": "CC0 1.0 (Mikael Häggström)",
    "ihc.png": "no known copyright restrictions (CMMI)",
    "camera.png": "CC0 (Lav Varshney)",
    "brick.png": "CC0 (CC0Textures)",
    "grass.png": "CC0 (linolafett)",
    "gravel.png": "CC0 (CC0Textures)",
    "coins.png": "no known copyright restrictions (Brooklyn Museum)",
    "text.png": "public domain (Wikipedia)",
    "cell.png": "CC0",
}


def skimage_data() -> Path:
    """scikit-image's bundled sample folder, found without importing scikit-image (only its files are used)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "scikit-image is not installed: `bash .ci/bootstrap` installs it into the test venvs (its photographs "
            "only, --no-deps)"
        )
    return Path(spec.origin).parent / "data"


def load_photo(path: Path) -> torch.Tensor:
    """[3, H, W] float in [0, 1] (grey photographs repeated to RGB)."""
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def camera_clip(
    photo: torch.Tensor,
    size: tuple[int, int],
    frames: int,
    gen: torch.Generator,
    scale: float | None = None,
    inside: bool = False,
) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1]: a virtual camera of `size` pixels pans and zooms over `photo` [3, Hp, Wp].

    `scale` is how many photo pixels one clip pixel spans at the first frame (drawn in [1, 2.5] when None:
    every photo is seen at several detail densities). Per frame the camera moves by up to 3 clip pixels and
    zooms by up to 3 %, as a handheld pan or a slow zoom would. With `inside` the pan is slowed and a zoom
    out bounded where the photo is too small for them, so the view never leaves the photo (without it a
    long clip over a small photo runs past the edge and repeats the border pixels; the committed tiny
    models were trained on clips made without it, so it stays off for their trainers, which must reproduce
    them)."""
    _, hp, wp = photo.shape
    h, w = size

    def u(lo, hi):
        return lo + (hi - lo) * float(torch.rand((), generator=gen))

    s = scale if scale is not None else u(1.0, 2.5)
    s = min(s, 0.95 * hp / h, 0.95 * wp / w)  # the whole view stays inside the photo
    zoom = math.exp(u(-0.03, 0.03)) if u(0, 1) < 0.5 else 1.0
    vy, vx = u(-3, 3) * s, u(-3, 3) * s  # photo pixels per frame
    if inside and frames > 1:  # a zoom out ends no wider than the photo allows (zooms in are left alone)
        zoom = min(zoom, (0.95 * min(hp / h, wp / w) / s) ** (1 / (frames - 1)))
    s_end = s * zoom ** (frames - 1)
    margin_y, margin_x = max(s, s_end) * h / 2, max(s, s_end) * w / 2
    if inside and frames > 1:
        vy = math.copysign(min(abs(vy), max(0.0, hp - 2 * margin_y) / (frames - 1)), vy)
        vx = math.copysign(min(abs(vx), max(0.0, wp - 2 * margin_x) / (frames - 1)), vx)
    travel_y, travel_x = abs(vy) * (frames - 1), abs(vx) * (frames - 1)
    cy = u(margin_y + travel_y / 2, max(margin_y + travel_y / 2, hp - margin_y - travel_y / 2))
    cx = u(margin_x + travel_x / 2, max(margin_x + travel_x / 2, wp - margin_x - travel_x / 2))
    cy, cx = cy - vy * (frames - 1) / 2, cx - vx * (frames - 1) / 2
    thetas = []
    for i in range(frames):
        si = s * zoom**i
        # affine_grid maps output [-1, 1] to input [-1, 1]: the view's half extent and centre in those units
        thetas.append(
            [
                [si * w / wp, 0.0, (2 * (cx + vx * i) / wp) - 1],
                [0.0, si * h / hp, (2 * (cy + vy * i) / hp) - 1],
            ]
        )
    theta = torch.tensor(thetas, dtype=torch.float32)
    grid = F.affine_grid(theta, [frames, 3, h, w], align_corners=False)
    src = photo[None].expand(frames, -1, -1, -1)
    # Antialias: a view that spans s photo pixels per clip pixel first blurs the photo by about s.
    if s > 1.3:
        k = int(round(s)) | 1
        src = F.avg_pool2d(F.pad(src, [k // 2] * 4, mode="replicate"), k, stride=1)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False).clamp(0, 1)


def heldout_clip(name: str, size: tuple[int, int], frames: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """[N, 3, H, W] a fixed camera move over a committed held-out photo, `scale` photo pixels per clip pixel
    (1 is the sharpest the photo has), kept inside the photo."""
    photo = load_photo(ASSETS / "heldout" / name)
    return camera_clip(photo, size, frames, torch.Generator().manual_seed(seed), scale=scale, inside=True)


def area_down(frames: torch.Tensor, factor: int) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 3, H/f, W/f]: what a camera with `factor` times larger pixels records."""
    return F.avg_pool2d(frames, factor)
