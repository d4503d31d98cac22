"""Fusion weights and the weighted accumulate `sum(w * x) / sum(w)` (PatchVSR section 3.3, supp. 2.5).

Dimension legend: B batch, C channels, T latent frames, H latent rows, W latent columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from .plan import Box, Kind, PatchPlan, Window, final_grid


class StitchMode(str, Enum):
    WEIGHTED = "weighted"  # the paper's final scheme: linear auxiliary profiles, amplified shared patch
    AVERAGE = "average"  # plain multi-patch averaging: every covering patch counts the same
    NAIVE = "naive"  # base grid only, stitched side by side: the seams the paper sets out to remove
    # One grid per step whose borders move between steps (plan.shifted_grids), and on the last step a grid
    # whose cells are centred on the base grid's borders (plan.final_grid): about the base grid's cost.
    SHIFTED = "shifted"


@dataclass(frozen=True)
class StitchConfig:
    # SHIFTED by default: about the base grid's cost per step, with seams, drift and flicker no worse than
    # WEIGHTED's on the proxies (README, Figures). Workflows that name a mode keep it.
    mode: StitchMode = StitchMode.SHIFTED
    # The four-patch intersection patch is amplified by this factor so its features win over the three
    # mismatched patches meeting there; 5.0 removes the "black holes" in the supplement's Fig. 6.
    blend_weight: float = 5.0
    # Floor of the linear auxiliary profile at its sides. Kept tiny but positive so every weight map is
    # strictly positive over its own patch; base patches alone already guarantee coverage.
    profile_floor: float = 1e-3
    # SHIFTED only: latent cells (frames) over which neighbouring grid cells cross-fade around each border;
    # each cell reaches about half of it into its neighbour. A cross-fade instead of a cut spreads a seam's
    # step over the fade; the cost is the fades' share of the frame (measured in README, Figures).
    # In time the cost is `grid_fade_t` frames per window border (2: about 10% at 241 frames). So short a
    # fade flickers with two alternating window sets; rotating the windows through up to `window_phases`
    # border sets (plan.window_phases: 6 fit at 241 frames) makes each border recur only once every 6
    # evaluations, and the flicker falls below that of the paper's overlapping windows (measured in
    # tests/unit/test_shifted.py and README, Figures).
    grid_fade: int = 3
    grid_fade_t: int = 2
    window_phases: int = 6
    # SHIFTED only: the smallest cell of the moved grid, as a fraction of the model's native patch per axis.
    # Moving every border away from the base grid's leaves thin strips at the frame's edges when the cells
    # are all alike (half a cell, a patch shape the model was never trained on); letting cells vary between
    # this fraction and the native size keeps them near it, at the price of borders that move less far.
    # Measured on the seam proxies (README, Figures).
    grid_min_cell: float = 0.625
    # SHIFTED only: the cross-fade (latent cells) of the last step's grid. Whatever patches disagree on at
    # the last step stays in the result (there is no later step to fuse it away), so the last grid puts
    # every border of the grid before it in the middle of a cell, as the paper's bridging patches do, and
    # fades its own borders over a wider band than the other steps' (8 cells: 64 px for Wan 2.1). Wider
    # fades lower the seam and drift proxies further and cost more (measured in tests/unit/test_shifted.py).
    final_fade: int = 8

    def grid_args(self) -> tuple:
        """(fade_t, phases, min_cell, gap) for plan.shifted_grids: the moved borders stay clear of the
        base grid's cross-fades."""
        return (self.grid_fade_t, self.window_phases, self.grid_min_cell, max(1, self.grid_fade))

    @property
    def uses_aux(self) -> bool:
        """Whether the plan's bridging patches run (WEIGHTED, AVERAGE); SHIFTED runs grids of its own."""
        return self.mode in (StitchMode.WEIGHTED, StitchMode.AVERAGE)


def _tent(n: int, floor: float, split: float | None = None) -> torch.Tensor:
    """[n] linear profile: 1 on the split line (default the centre), falling to `floor` at both sides (cell
    centres), each side over its own length."""
    pos = torch.arange(n, dtype=torch.float64) + 0.5
    c = n / 2 if split is None else float(split)
    half = torch.where(pos < c, torch.tensor(c, dtype=torch.float64), torch.tensor(n - c, dtype=torch.float64))
    return (1.0 - (pos - c).abs() / half).clamp_min(floor).float()


def _split(edges: tuple[int, ...] | None, lo: int, hi: int) -> int | None:
    """Where inside [lo, hi) the base border it bridges lies, relative to lo (None: at its centre)."""
    inner = [e for e in (edges or ()) if lo < e < hi]
    return inner[0] - lo if len(inner) == 1 else None


def spatial_weight(box: Box, cfg: StitchConfig, plan: PatchPlan | None = None) -> torch.Tensor:
    """[h, w] fusion weight of one of the plan's patches under the WEIGHTED, AVERAGE or NAIVE scheme. A
    bridging patch's profile peaks on the base border it bridges (its split line: `plan`'s edge inside it,
    which the token grid can put a cell off its centre), falling linearly to each side."""
    h, w = box.height, box.width
    if cfg.mode != StitchMode.WEIGHTED or box.kind == Kind.BASE:
        return torch.ones(h, w)
    sy = _split(plan.row_edges if plan else None, box.y0, box.y1)
    sx = _split(plan.col_edges if plan else None, box.x0, box.x1)
    ones_y, ones_x = torch.ones(h), torch.ones(w)
    if box.kind == Kind.AUX_H:  # split line is vertical: the weight falls off along x
        wy, wx = ones_y, _tent(w, cfg.profile_floor, sx)
    elif box.kind == Kind.AUX_V:
        wy, wx = _tent(h, cfg.profile_floor, sy), ones_x
    else:  # AUX_X: falls off along both axes from the intersection, amplified by the blend weight
        wy, wx = _tent(h, cfg.profile_floor, sy) * cfg.blend_weight, _tent(w, cfg.profile_floor, sx)
    return wy[:, None] * wx[None, :]


def temporal_weight(window: Window, plan: PatchPlan) -> torch.Tensor:
    """[t] weight of a temporal window: ramps linearly over the frames it shares with its neighbours."""
    t = window.length
    w = torch.ones(t)
    for o in plan.windows:
        if o.t0 < window.t0 < o.t1:  # shares its first frames with the previous window: ramp up
            n = o.t1 - window.t0
            w[:n] = torch.minimum(w[:n], (torch.arange(n) + 1.0) / (n + 1))
        if window.t0 < o.t0 < window.t1:  # shares its last frames with the next window: ramp down
            n = window.t1 - o.t0
            w[t - n :] = torch.minimum(w[t - n :], torch.flip((torch.arange(n) + 1.0) / (n + 1), dims=[0]))
    return w


def patch_list(plan: PatchPlan, cfg: StitchConfig) -> list[tuple[Window, Box]]:
    """Every (window, box) pair the stitcher fuses, base patches first."""
    boxes = plan.boxes if cfg.uses_aux else plan.base_boxes()
    return [(win, box) for win in plan.windows for box in boxes]


def weight_volume(plan: PatchPlan, cfg: StitchConfig, window: Window, box: Box) -> torch.Tensor:
    """[t, h, w] fusion weight of one patch in one window."""
    return temporal_weight(window, plan)[:, None, None] * spatial_weight(box, cfg, plan)[None]


def crossfade(lo: int, hi: int, length: int, fade: int) -> tuple[int, int, torch.Tensor]:
    """One axis of a grid cell [lo, hi) of an axis of `length`, cross-faded with its neighbours over
    `fade` cells around each border it shares: the cell grown to [lo - ceil(fade/2), hi + fade // 2) where
    it has neighbours, and its weight [hi' - lo'], 1 inside and a linear ramp over each fade. Two
    neighbours' ramps sum to 1 there, so the fused result is a cross-fade; every weight stays above 0 on
    the patch's own cells."""
    before, after = fade - fade // 2, fade // 2  # a border at e fades over [e - before, e + after)
    a, b = (lo - before if lo > 0 else lo), (hi + after if hi < length else hi)
    pos = torch.arange(a, b, dtype=torch.float64) + 0.5
    w = torch.ones(b - a, dtype=torch.float64)
    if fade > 0 and lo > 0:
        w = torch.minimum(w, (pos - (lo - before)) / fade)
    if fade > 0 and hi < length:
        w = torch.minimum(w, ((hi + after) - pos) / fade)
    return a, b, w.float()


def grid_patches(grid: PatchPlan, fade: int, fade_t: int | None) -> dict[tuple[Window, Box], tuple]:
    """The patches of a grid that tiles the latent (one of SHIFTED's), each cell grown into its neighbours
    by a cross-fade of `fade` cells around every border: {patch: the (t, y, x) weight profiles whose outer
    product is its [t, h, w] weight}. In time the windows are cross-faded likewise over `fade_t` frames, or,
    with None, are already overlapping ones (the paper's) and ramp over the frames they share. Fades are
    capped at the smallest cell (window), so two ramps never meet inside one cell."""
    T, H, W = grid.latent_shape
    boxes, windows = grid.base_boxes(), grid.windows
    fade = min(fade, min(min(b.height, b.width) for b in boxes))
    out = {}
    for win in windows:
        if fade_t is None:
            t0, t1, wt = win.t0, win.t1, temporal_weight(win, grid)
        else:
            t0, t1, wt = crossfade(win.t0, win.t1, T, min(fade_t, min(w.length for w in windows)))
        for box in boxes:
            y0, y1, wy = crossfade(box.y0, box.y1, H, fade)
            x0, x1, wx = crossfade(box.x0, box.x1, W, fade)
            out[(Window(t0, t1), Box(box.kind, y0, y1, x0, x1))] = (wt, wy, wx)
    return out


def profile_volume(profiles: tuple) -> torch.Tensor:
    """(wt [t], wy [h], wx [w]) -> [t, h, w] their outer product."""
    wt, wy, wx = profiles
    return wt[:, None, None] * wy[None, :, None] * wx[None, None, :]


class Accumulator:
    """Preallocated `sum(w * x)` and `sum(w)` over the full-size latent; `result()` asserts coverage."""

    def __init__(self, shape: tuple[int, ...], device, dtype=torch.float32):
        """shape: [B, C, T, H, W] of the full-size prediction."""
        self.num = torch.zeros(shape, device=device, dtype=dtype)
        self.den = torch.zeros(shape[2:], device=device, dtype=dtype)

    def add(self, x: torch.Tensor, weight: torch.Tensor, window: Window, box: Box) -> None:
        """x: [B, C, t, h, w] patch prediction; weight: [t, h, w]."""
        w = weight.to(self.num.device, self.num.dtype)
        sl = (slice(window.t0, window.t1), slice(box.y0, box.y1), slice(box.x0, box.x1))
        self.num[(slice(None), slice(None)) + sl] += x.to(self.num.dtype) * w
        self.den[sl] += w

    def result(self) -> torch.Tensor:
        """[B, C, T, H, W] fused prediction."""
        assert self.den.min() > 0, "stitcher left latent cells uncovered: the patch plan is broken"
        return self.num / self.den


def weight_maps(plan: PatchPlan, cfg: StitchConfig) -> torch.Tensor:
    """[4, H, W] each kind's share of the normalised spatial weight (base, aux_h, aux_v, aux_x), for the
    stitcher's picture. SHIFTED shows its last step, whose fusion stays in the result: the cells of
    plan.final_grid in two alternating kinds (base, aux_x), cross-faded as that step fuses them."""
    _, H, W = plan.latent_shape
    shares = torch.zeros(4, H, W)
    if cfg.mode == StitchMode.SHIFTED:
        grid = final_grid(plan)
        cols = len(grid.col_edges) - 1
        cells = list(grid_patches(grid, cfg.final_fade, 0).items())[: len(grid.boxes)]  # the first window's
        for k, ((_, box), (_, wy, wx)) in enumerate(cells):  # row-major, as the grid's boxes
            parity = (k // cols + k % cols) % 2
            shares[3 * parity, box.y0 : box.y1, box.x0 : box.x1] += wy[:, None] * wx[None, :]
    else:
        order = [Kind.BASE, Kind.AUX_H, Kind.AUX_V, Kind.AUX_X]
        boxes = plan.boxes if cfg.uses_aux else plan.base_boxes()
        for box in boxes:
            shares[order.index(box.kind), box.y0 : box.y1, box.x0 : box.x1] += spatial_weight(box, cfg, plan)
    total = shares.sum(0, keepdim=True)
    assert total.min() > 0, "weight maps leave latent cells uncovered"
    return shares / total
