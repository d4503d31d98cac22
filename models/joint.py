"""Multi-patch joint modulation (PatchVSR section 3.3): every overlapping patch prediction is fused at
every denoising step, so neighbouring patches agree before the next step starts from the fused latent.

Dimension legend: B batch, C channels, T latent frames, H latent rows, W latent columns, k patches in a
batch. The fused result is a weighted mean, so it does not depend on the order patches run in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from einops import rearrange

from .blend import Accumulator, StitchConfig, patch_list, weight_volume
from .plan import Box, PatchPlan, Window

Patch = tuple[Window, Box]
# fn(x: [(B k), C, t, h, w], patches: the k patches) -> [(B k), C, t, h, w]. Rows are batch-major: the k
# patches of row 0, then of row 1, ... ComfyUI stacks cond and uncond rows as chunks of the batch
# (transformer_options["cond_or_uncond"]), and guidance extensions split the batch into those chunks; with
# batch-major rows each chunk still holds exactly its own rows (for all k patches).
PatchFn = Callable[[torch.Tensor, Sequence[Patch]], torch.Tensor]
# post(pred: [B, C, t, h, w], x: [B, C, t, h, w], patch) -> [B, C, t, h, w], per patch before fusion
PostFn = Callable[[torch.Tensor, torch.Tensor, Patch], torch.Tensor]


def crop(x: torch.Tensor, window: Window, box: Box) -> torch.Tensor:
    """x: [B, C, T, H, W] -> [B, C, t, h, w] view of one patch."""
    return x[:, :, window.t0 : window.t1, box.y0 : box.y1, box.x0 : box.x1]


def patch_rows(value, patches: Sequence[Patch], batch: int, latent_thw: tuple[int, int, int]):
    """Per-call model input laid out like a patch batch (rows batch-major, as the latent crops).

    value: [B, ...] per-row data -> [(B k), ...] repeated per patch; [B, C, T, H, W] on the latent's grid ->
    [(B k), C, t, h, w] cropped per patch; anything without the batch dim (constants, options) -> unchanged.
    """
    if not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape[0] != batch:
        return value
    if value.ndim == 5 and tuple(value.shape[2:]) == tuple(latent_thw):
        return rearrange(torch.stack([crop(value, *p) for p in patches]), "k b c t h w -> (b k) c t h w")
    return value.repeat_interleave(len(patches), dim=0)


def patch_timesteps(timestep: torch.Tensor, patches: Sequence[Patch], latent_frames: int) -> torch.Tensor:
    """timestep: [B], or per latent frame [B, T] (Wan 2.2 with a denoise mask) -> [(B k)] or [(B k), t]."""
    if timestep.ndim == 1:
        return timestep.repeat_interleave(len(patches), dim=0)
    if timestep.ndim == 2 and timestep.shape[1] == latent_frames:
        per_patch = torch.stack([timestep[:, win.t0 : win.t1] for win, _ in patches])  # k B t
        return rearrange(per_patch, "k b t -> (b k) t")
    raise ValueError(
        f"model: timesteps of shape {list(timestep.shape)} (per token) reached PatchVSR's sampler, from a denoise "
        "mask or an extension that varies the noise level across the frame; only per-frame timesteps can be cut "
        "into patches. Remove the mask or the extension."
    )


@dataclass(frozen=True)
class JointModulation:
    """The patches of a plan grouped into DiT batches, with their fusion weights precomputed once."""

    plan: PatchPlan
    stitch: StitchConfig
    batches: tuple[tuple[Patch, ...], ...]
    weights: dict

    @classmethod
    def build(cls, plan: PatchPlan, stitch: StitchConfig, batch_size: int) -> JointModulation:
        assert batch_size >= 1, f"patch batch size must be >= 1, got {batch_size}"
        pairs = patch_list(plan, stitch)
        # Only patches of one shape can share a DiT batch; grouping keeps the plan's order inside a group.
        groups: dict[tuple[int, int, int], list[Patch]] = {}
        for win, box in pairs:
            groups.setdefault((win.length, box.height, box.width), []).append((win, box))
        batches = tuple(tuple(g[i : i + batch_size]) for g in groups.values() for i in range(0, len(g), batch_size))
        weights = {p: weight_volume(plan, stitch, *p) for p in pairs}
        return cls(plan, stitch, batches, weights)

    @property
    def num_patches(self) -> int:
        return sum(len(b) for b in self.batches)

    def __call__(
        self,
        x: torch.Tensor,
        fn: PatchFn,
        post: PostFn | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """x: [B, C, T, H, W] full-size input -> [B, C, T, H, W] fused prediction."""
        T, H, W = self.plan.latent_shape
        assert tuple(x.shape[2:]) == (T, H, W), f"latent {tuple(x.shape)} does not match plan {T}x{H}x{W}"
        acc = Accumulator(tuple(x.shape), x.device)
        for batch in self.batches:
            xs = torch.stack([crop(x, *p) for p in batch])  # k B C t h w
            out = fn(rearrange(xs, "k b c t h w -> (b k) c t h w"), batch)
            out = rearrange(out, "(b k) c t h w -> k b c t h w", k=len(batch))
            for i, p in enumerate(batch):
                pred = out[i] if post is None else post(out[i], xs[i], p)
                acc.add(pred, self.weights[p], *p)
            if on_batch is not None:
                on_batch(len(batch))
        return acc.result().to(x.dtype)
