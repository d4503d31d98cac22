"""Global context (PatchVSR section 3.2, supp. section 1): the whole LR video at patch size, a location
mask per patch, and its training-free use: anchoring each patch's low frequencies to the global view.

Dimension legend: B batch, C channels, T latent frames, H/W full-size latent, gh/gw global latent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F
from einops import rearrange

from .plan import Box, PatchPlan


@dataclass(frozen=True)
class ContextConfig:
    # How far each patch's low frequencies move toward the global view at every evaluation, in [0, 1].
    # 0 disables the training-free anchoring; 1 replaces the patch's colour and tone by the global view's.
    strength: float = 0.5
    # Flow time the global latent is noised to (supplement section 1: timestep 150 of 1000). Smaller than
    # the patch branch's 0.25 because noise on the full video hits each local area harder.
    noise_t: float = 0.15
    # Gaussian sigma of the low-pass, as a fraction of the patch's smaller side in latent cells: large
    # enough to hold only colour and tone, so the patch's own detail is never pulled toward the blur.
    lowpass_frac: float = 0.125
    # Anchoring with a trained adapter connected: off unless asked. The adapter has learnt its own use of the
    # global view (G-CA); anchoring on top pulls its output toward a blur it was never trained against.
    with_adapter: bool = False


def location_mask(box: Box, latent_hw: tuple[int, int], global_hw: tuple[int, int]) -> torch.Tensor:
    """[gh, gw] binary mask of where `box` (full-size latent cells) lies in the global latent."""
    H, W = latent_hw
    gh, gw = global_hw
    y0, y1 = math.floor(box.y0 * gh / H), max(math.ceil(box.y1 * gh / H), math.floor(box.y0 * gh / H) + 1)
    x0, x1 = math.floor(box.x0 * gw / W), max(math.ceil(box.x1 * gw / W), math.floor(box.x0 * gw / W) + 1)
    mask = torch.zeros(gh, gw)
    mask[y0:y1, x0:x1] = 1.0
    return mask


def location_masks(plan: PatchPlan, global_hw: tuple[int, int]) -> torch.Tensor:
    """[N, gh, gw] location masks, one per box of the plan in its order."""
    _, H, W = plan.latent_shape
    return torch.stack([location_mask(b, (H, W), global_hw) for b in plan.boxes])


def lowpass_sigma(plan: PatchPlan, cfg: ContextConfig, global_hw: tuple[int, int]) -> float:
    """Low-pass sigma in full-size latent cells: a fraction of the patch's smaller side, never finer than
    one cell of the global view (global_hw: its latent size) seen at full size, below which the anchor would
    pull each patch toward the bilinear upsampling's own texture instead of the frame's colour and tone."""
    _, H, W = plan.latent_shape
    ph, pw = plan.config.patch_hw
    gh, gw = global_hw
    return max(1.0, cfg.lowpass_frac * min(ph, pw), H / gh, W / gw)


def lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """x: [B, C, T, h, w] -> same shape, Gaussian-blurred over h and w with reflected borders."""
    b, _, t, h, w = x.shape
    # Reflect padding needs the half kernel to stay inside the patch; a narrower kernel there is harmless.
    half = min(math.ceil(3 * sigma), h - 1, w - 1)
    if half < 1:
        return x
    frames = rearrange(x, "b c t h w -> (b t) c h w")
    out = kornia.filters.gaussian_blur2d(frames.float(), (2 * half + 1, 2 * half + 1), (sigma, sigma), "reflect")
    return rearrange(out.to(x.dtype), "(b t) c h w -> b c t h w", b=b, t=t)


def global_lowpass(global_latent: torch.Tensor, plan: PatchPlan, sigma: float) -> torch.Tensor:
    """global_latent: [B, C, T, gh, gw] -> [B, C, T, H, W] its low frequencies at full latent size."""
    T, H, W = plan.latent_shape
    assert global_latent.shape[2] == T, f"global latent has {global_latent.shape[2]} frames, plan {T}"
    frames = rearrange(global_latent, "b c t h w -> (b t) c h w").float()
    up = F.interpolate(frames, size=(H, W), mode="bilinear", align_corners=False)
    up = rearrange(up, "(b t) c h w -> b c t h w", t=T)
    return lowpass(up, sigma).to(global_latent.dtype)


def anchor_low_frequency(x0: torch.Tensor, global_lp: torch.Tensor, strength: float, sigma: float) -> torch.Tensor:
    """x0, global_lp: [B, C, t, h, w] in the model's normalised latent space -> x0 with its low frequencies
    moved toward the global view's, computed in float32 (a bf16 difference of two blurs loses the small
    colour offsets this is for) and returned in x0's dtype."""
    if strength == 0.0:
        return x0
    x = x0.float()
    return (x + strength * (global_lp.float() - lowpass(x, sigma))).to(x0.dtype)


def anchored_velocity(
    v: torch.Tensor, x: torch.Tensor, sigmas: torch.Tensor, global_lp: torch.Tensor, strength: float, sigma: float
) -> torch.Tensor:
    """v, x: [B, C, t, h, w] a patch's predicted velocity and its input at flow times sigmas [B]; global_lp:
    the global view's low frequencies over the patch -> the velocity whose clean estimate x0 = x - sigma v
    (rectified flow) has its low frequencies anchored (anchor_low_frequency). All in float32: in bf16, x - x0
    loses the small offset at low sigma."""
    s = sigmas.view(-1, 1, 1, 1, 1).to(v.device, torch.float32)
    x0 = anchor_low_frequency(x.float() - s * v.float(), global_lp, strength, sigma)
    return ((x.float() - x0) / s.clamp_min(1e-6)).to(v.dtype)
