"""Fusion weights and the weighted accumulate `sum(w * x) / sum(w)` (PatchVSR section 3.3, supp. 2.5).

Dimension legend: B batch, C channels, T latent frames, H latent rows, W latent columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from .plan import Box, Kind, PatchPlan, Window


class StitchMode(str, Enum):
    WEIGHTED = "weighted"  # the paper's final scheme: linear auxiliary profiles, amplified shared patch
    AVERAGE = "average"  # plain multi-patch averaging: every covering patch counts the same
    NAIVE = "naive"  # base grid only, stitched side by side: the seams the paper sets out to remove
    # One grid per model evaluation whose borders move between evaluations (plan.shifted_grid), the
    # paper's weighted scheme on the last steps only: about the base grid's cost per step.
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
    # SHIFTED only: how many of the last sampling steps use the weighted scheme with every bridging patch.
    # At low noise a model mostly keeps what the latent holds, so the last steps are where a seam left by
    # a single grid would stay; one step is enough on the seam proxies (README, Figures).
    weighted_tail: int = 1
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

    def grid_args(self) -> tuple:
        """(fade_t, phases, min_cell, gap) for plan.shifted_grids: the moved borders stay clear of the
        base grid's cross-fades."""
        return (self.grid_fade_t, self.window_phases, self.grid_min_cell, max(1, self.grid_fade))

    @property
    def uses_aux(self) -> bool:
        return self.mode != StitchMode.NAIVE


def _tent(n: int, floor: float) -> torch.Tensor:
    """[n] linear profile: 1 on the centre line, falling to `floor` at both sides (cell centres)."""
    pos = torch.arange(n, dtype=torch.float64) + 0.5
    return (1.0 - (pos - n / 2).abs() / (n / 2)).clamp_min(floor).float()


def spatial_weight(box: Box, cfg: StitchConfig) -> torch.Tensor:
    """[h, w] fusion weight of one patch (SHIFTED's weighted steps use the weighted profiles)."""
    h, w = box.height, box.width
    if cfg.mode not in (StitchMode.WEIGHTED, StitchMode.SHIFTED) or box.kind == Kind.BASE:
        return torch.ones(h, w)
    ones_y, ones_x = torch.ones(h), torch.ones(w)
    if box.kind == Kind.AUX_H:  # split line is vertical: the weight falls off along x
        wy, wx = ones_y, _tent(w, cfg.profile_floor)
    elif box.kind == Kind.AUX_V:
        wy, wx = _tent(h, cfg.profile_floor), ones_x
    else:  # AUX_X: falls off along both axes from the intersection, amplified by the blend weight
        wy, wx = _tent(h, cfg.profile_floor) * cfg.blend_weight, _tent(w, cfg.profile_floor)
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
    return temporal_weight(window, plan)[:, None, None] * spatial_weight(box, cfg)[None]


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
    """[4, H, W] each kind's share of the normalised spatial weight (base, aux_h, aux_v, aux_x)."""
    _, H, W = plan.latent_shape
    shares = torch.zeros(4, H, W)
    order = [Kind.BASE, Kind.AUX_H, Kind.AUX_V, Kind.AUX_X]
    boxes = plan.boxes if cfg.uses_aux else plan.base_boxes()
    for box in boxes:
        shares[order.index(box.kind), box.y0 : box.y1, box.x0 : box.x1] += spatial_weight(box, cfg)
    total = shares.sum(0, keepdim=True)
    assert total.min() > 0, "weight maps leave latent cells uncovered"
    return shares / total
