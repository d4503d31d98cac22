"""Pictures of a plan for the artist: the patch grid over a frame, and the stitcher's weight maps."""

from __future__ import annotations

import torch

from .blend import StitchConfig
from .plan import Kind, PatchPlan, shifted_grids

# RGB per kind: base boxes solid, auxiliary boxes dashed (PatchVSR Fig. 2 uses blue and red).
COLOURS = {
    Kind.BASE: (0.15, 0.45, 1.0),
    Kind.AUX_H: (1.0, 0.2, 0.2),
    Kind.AUX_V: (1.0, 0.6, 0.1),
    Kind.AUX_X: (0.9, 0.1, 0.9),
}


def _line(img: torch.Tensor, y0: int, x0: int, y1: int, x1: int, colour, dash: int, width: int) -> None:
    """Draws an axis-aligned line into img [H, W, 3] in place; dash=0 draws it solid."""
    H, W, _ = img.shape
    c = torch.tensor(colour, dtype=img.dtype)
    n = max(y1 - y0, x1 - x0) + 1
    for i in range(n):
        if dash and (i // dash) % 2:
            continue
        y, x = min(y0 + i, y1) if y1 > y0 else y0, min(x0 + i, x1) if x1 > x0 else x0
        img[
            max(0, y - width // 2) : min(H, y + width - width // 2),
            max(0, x - width // 2) : min(W, x + width - width // 2),
        ] = c


def draw_plan(frame: torch.Tensor, plan: PatchPlan) -> torch.Tensor:
    """frame: [H, W, 3] picture of the whole frame at any size -> copy with the plan's boxes drawn."""
    img = frame.clone().float()
    H, W, _ = img.shape
    _, lh, lw = plan.latent_shape
    sy, sx = H / lh, W / lw
    width = max(1, round(min(H, W) / 200))
    dash = max(4, round(min(H, W) / 60))
    # Auxiliary boxes first, inset a little so their dashes stay visible beside the base lines.
    for box in sorted(plan.boxes, key=lambda b: b.kind == Kind.BASE):
        inset = 0 if box.kind == Kind.BASE else 2 * width
        y0, y1 = round(box.y0 * sy) + inset, round(box.y1 * sy) - 1 - inset
        x0, x1 = round(box.x0 * sx) + inset, round(box.x1 * sx) - 1 - inset
        d = 0 if box.kind == Kind.BASE else dash
        colour = COLOURS[box.kind]
        for a, b, c, e in ((y0, x0, y0, x1), (y1, x0, y1, x1), (y0, x0, y1, x0), (y0, x1, y1, x1)):
            _line(img, a, b, c, e, colour, d, width)
    return img


SHIFTED_COLOUR = (1.0, 1.0, 1.0)


def draw_shifted(frame: torch.Tensor, grid: PatchPlan) -> torch.Tensor:
    """frame: [H, W, 3] -> copy with the interior borders of a shifted grid (plan.shifted_grids) drawn thin
    and dotted, so they read apart from the plan's own boxes drawn on top."""
    img = frame.clone().float()
    H, W, _ = img.shape
    _, lh, lw = grid.latent_shape
    sy, sx = H / lh, W / lw
    width = max(1, round(min(H, W) / 400))
    dot = max(2, round(min(H, W) / 150))
    for y in grid.row_edges[1:-1]:
        _line(img, round(y * sy), 0, round(y * sy), W - 1, SHIFTED_COLOUR, dot, width)
    for x in grid.col_edges[1:-1]:
        _line(img, 0, round(x * sx), H - 1, round(x * sx), SHIFTED_COLOUR, dot, width)
    return img


def plan_picture(frame: torch.Tensor, plan: PatchPlan) -> torch.Tensor:
    """frame: [H, W, 3] -> the partitioner's preview: the shifted stitch's moved grid (its other grid is the
    base grid) under the plan's own boxes."""
    _, moved = shifted_grids(plan, *StitchConfig().grid_args())
    return draw_plan(draw_shifted(frame, moved[0]), plan)


def weight_picture(shares: torch.Tensor) -> torch.Tensor:
    """shares: [4, H, W] per-kind weight shares -> [H, W, 3] picture, each kind in its colour."""
    colours = torch.tensor([COLOURS[k] for k in (Kind.BASE, Kind.AUX_H, Kind.AUX_V, Kind.AUX_X)])  # 4 3
    return torch.einsum("khw,kc->hwc", shares, colours).clamp(0, 1)
