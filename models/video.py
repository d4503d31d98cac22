"""Pixel-side video operations: bicubic upscaling by tiles, the global view, tiled encoding.

Dimension legend: N pixel frames, H/W pixel rows/columns (IMAGE layout [N, H, W, 3], ComfyUI's),
C latent channels, T latent frames, h/w latent rows/columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import kornia
import torch
import torch.nn.functional as F
from einops import rearrange

from .blend import Accumulator
from .plan import Box, Kind, Window

# encode(pixels [N, H, W, 3] in [0, 1]) -> latent [1, C, T, h, w]
EncodeFn = Callable[[torch.Tensor], torch.Tensor]


def resize_frames(frames: torch.Tensor, hw: tuple[int, int], chunk: int = 8) -> torch.Tensor:
    """frames: [N, H, W, 3] -> [N, h, w, 3], bicubic and antialiased (kornia), a few frames at a time."""
    out = []
    for i in range(0, frames.shape[0], chunk):
        x = rearrange(frames[i : i + chunk], "n h w c -> n c h w").float()
        y = kornia.geometry.transform.resize(x, hw, interpolation="bicubic", antialias=True)
        out.append(rearrange(y, "n c h w -> n h w c").clamp(0, 1).to(frames.dtype))
    return torch.cat(out)


def resize_latent(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """x: [B, C, T, h, w] -> [B, C, T, *hw] latent, each frame resized bicubic and antialiased (kornia)."""
    b = x.shape[0]
    frames = rearrange(x.float(), "b c t h w -> (b t) c h w")
    frames = kornia.geometry.transform.resize(frames, hw, interpolation="bicubic", antialias=True)
    return rearrange(frames, "(b t) c h w -> b c t h w", b=b).contiguous()


def upscale_region(
    frames: torch.Tensor, target_hw: tuple[int, int], y0: int, y1: int, x0: int, x1: int
) -> torch.Tensor:
    """frames: [N, H, W, 3] -> [N, y1 - y0, x1 - x0, 3]: rows y0:y1, cols x0:x1 of the bicubic upscale to
    `target_hw`, computed from the source pixels that region needs only. Equals the same region of a
    full-frame bicubic upscale (align_corners=False, edge pixels replicated) to float precision."""
    N, H, W, _ = frames.shape
    Ht, Wt = target_hw
    sy, sx = H / Ht, W / Wt
    # Source window: the cubic kernel reaches 2 pixels beyond the mapped coordinates.
    u0, u1 = max(0, math.floor((y0 + 0.5) * sy - 0.5) - 2), min(H, math.ceil((y1 - 0.5) * sy - 0.5) + 3)
    v0, v1 = max(0, math.floor((x0 + 0.5) * sx - 0.5) - 2), min(W, math.ceil((x1 - 0.5) * sx - 0.5) + 3)
    src = rearrange(frames[:, u0:u1, v0:v1], "n h w c -> n c h w").float()
    hs, ws = u1 - u0, v1 - v0
    # Output pixel y maps to source coordinate (y + 0.5) * sy - 0.5; normalise it inside the crop.
    gy = ((torch.arange(y0, y1, dtype=torch.float64) + 0.5) * sy - 0.5 - u0 + 0.5) * 2 / hs - 1
    gx = ((torch.arange(x0, x1, dtype=torch.float64) + 0.5) * sx - 0.5 - v0 + 0.5) * 2 / ws - 1
    grid = torch.stack(torch.meshgrid(gx.float(), gy.float(), indexing="xy"), dim=-1)  # [h, w, 2] as (x, y)
    out = F.grid_sample(src, grid.expand(N, -1, -1, -1), mode="bicubic", padding_mode="border", align_corners=False)
    return rearrange(out, "n c h w -> n h w c").clamp(0, 1).to(frames.dtype)


def _tile_edges(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Tiles of at most `tile` cells over `length`, neighbours sharing at least `overlap` cells."""
    if length <= tile:
        return [(0, length)]
    n = math.ceil((length - overlap) / (tile - overlap))
    starts = [round(i * (length - tile) / (n - 1)) for i in range(n)]
    return [(s, s + tile) for s in starts]


def _ramp_weight(h: int, w: int, overlap: int) -> torch.Tensor:
    """[h, w] weight rising linearly over `overlap` cells from each side (never zero)."""

    def axis(n):
        pos = torch.arange(n, dtype=torch.float32)
        return torch.minimum((pos + 1) / (overlap + 1), (n - pos) / (overlap + 1)).clamp(max=1.0)

    return axis(h)[:, None] * axis(w)[None, :]


def encode_upscaled_tiled(
    frames: torch.Tensor,
    target_hw: tuple[int, int],
    stride: int,
    encode: EncodeFn,
    tile: int = 64,
    overlap: int = 8,
    on_tile: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """frames: [N, H, W, 3] LR video -> [1, C, T, Ht/stride, Wt/stride] latent of its bicubic upscale.

    The upscaled video is never held whole: each latent tile (`tile` cells, `overlap` shared) is
    upscaled from its own source pixels, encoded, and blended into a preallocated latent, so memory is
    bounded by the tile, not by the output size.
    """
    Ht, Wt = target_hw
    h, w = Ht // stride, Wt // stride
    assert h * stride == Ht and w * stride == Wt, f"target {Ht}x{Wt} is not a multiple of the stride {stride}"
    tiles = [(ya, yb, xa, xb) for ya, yb in _tile_edges(h, tile, overlap) for xa, xb in _tile_edges(w, tile, overlap)]
    acc = None
    for i, (ya, yb, xa, xb) in enumerate(tiles):
        pixels = upscale_region(frames, target_hw, ya * stride, yb * stride, xa * stride, xb * stride)
        lat = encode(pixels)  # 1 C T th tw
        if acc is None:
            acc = Accumulator((lat.shape[0], lat.shape[1], lat.shape[2], h, w), lat.device)
        weight = _ramp_weight(yb - ya, xb - xa, overlap)[None].expand(lat.shape[2], -1, -1)
        acc.add(lat, weight, Window(0, lat.shape[2]), Box(Kind.BASE, ya, yb, xa, xb))
        if on_tile is not None:
            on_tile(i + 1, len(tiles))
    return acc.result()
