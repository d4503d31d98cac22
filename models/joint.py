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

from .blend import Accumulator, StitchConfig, StitchMode, patch_list, weight_volume
from .memory import BatchSizer
from .plan import Box, PatchPlan, Window, shifted_grids

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


def _group(pairs: Sequence[Patch], batch_size: int | None) -> tuple[tuple[Patch, ...], ...]:
    """DiT batches: only patches of one shape can share one; grouping keeps the order inside a group.
    batch_size None: one batch per shape (a BatchSizer splits it at run time)."""
    groups: dict[tuple[int, int, int], list[Patch]] = {}
    for win, box in pairs:
        groups.setdefault((win.length, box.height, box.width), []).append((win, box))
    return tuple(
        tuple(g[i : i + (batch_size or len(g))])
        for g in groups.values()
        for i in range(0, len(g), batch_size or len(g))
    )


def _ramp(lo: int, hi: int, length: int, fade: int) -> tuple[int, int, torch.Tensor]:
    """One axis of a grid cell [lo, hi) of an axis of `length`, cross-faded with its neighbours over
    `fade` cells around each border it shares: the cell grown to [lo - ceil(fade/2), hi + fade // 2) where
    it has neighbours, and its weight, 1 inside and a linear ramp over each fade. Two neighbours' ramps sum
    to 1 there, so the fused result is a cross-fade; every weight stays above 0 on the patch's own cells."""
    before, after = fade - fade // 2, fade // 2  # a border at e fades over [e - before, e + after)
    a, b = (lo - before if lo > 0 else lo), (hi + after if hi < length else hi)
    pos = torch.arange(a, b, dtype=torch.float64) + 0.5
    w = torch.ones(b - a, dtype=torch.float64)
    if fade > 0 and lo > 0:
        w = torch.minimum(w, (pos - (lo - before)) / fade)
    if fade > 0 and hi < length:
        w = torch.minimum(w, ((hi + after) - pos) / fade)
    return a, b, w.float()


def overlapped_grid(grid: PatchPlan, stitch: StitchConfig, batch_size: int | None, fade: int, fade_t: int):
    """A joint modulation of a grid that tiles the latent (plan.shifted_grid), each cell grown into its
    neighbours and cross-faded over `fade` cells (`fade_t` frames) around every border. Fades are capped at
    the smallest cell, so two ramps never meet inside one cell."""
    T, H, W = grid.latent_shape
    boxes, windows = grid.base_boxes(), grid.windows
    fade = min(fade, min(min(b.height, b.width) for b in boxes))
    fade_t = min(fade_t, min(w.length for w in windows))
    pairs, weights = [], {}
    for win in windows:
        t0, t1, wt = _ramp(win.t0, win.t1, T, fade_t)
        for box in boxes:
            y0, y1, wy = _ramp(box.y0, box.y1, H, fade)
            x0, x1, wx = _ramp(box.x0, box.x1, W, fade)
            p = (Window(t0, t1), Box(box.kind, y0, y1, x0, x1))
            pairs.append(p)
            weights[p] = wt[:, None, None] * wy[None, :, None] * wx[None, None, :]
    return JointModulation(grid, stitch, _group(pairs, batch_size), weights)


@dataclass(frozen=True)
class JointModulation:
    """The patches of a plan grouped into DiT batches, with their fusion weights precomputed once."""

    plan: PatchPlan
    stitch: StitchConfig
    batches: tuple[tuple[Patch, ...], ...]
    weights: dict

    @classmethod
    def build(cls, plan: PatchPlan, stitch: StitchConfig, batch_size: int | None) -> JointModulation:
        assert batch_size is None or batch_size >= 1, f"patch batch size must be >= 1 or None, got {batch_size}"
        pairs = patch_list(plan, stitch)
        weights = {p: weight_volume(plan, stitch, *p) for p in pairs}
        return cls(plan, stitch, _group(pairs, batch_size), weights)

    @property
    def num_patches(self) -> int:
        return sum(len(b) for b in self.batches)

    def __call__(
        self,
        x: torch.Tensor,
        fn: PatchFn,
        post: PostFn | None = None,
        on_batch: Callable[[int], None] | None = None,
        sizer: BatchSizer | None = None,
    ) -> torch.Tensor:
        """x: [B, C, T, H, W] full-size input -> [B, C, T, H, W] fused prediction.

        With a `sizer`, each batch runs in calls of as many patches as it allows; a call that runs out of
        memory is retried with half as many patches (the fused result does not depend on how patches are
        batched). Without one, each batch is one call."""
        T, H, W = self.plan.latent_shape
        assert tuple(x.shape[2:]) == (T, H, W), f"latent {tuple(x.shape)} does not match plan {T}x{H}x{W}"
        acc = Accumulator(tuple(x.shape), x.device)
        for batch in self.batches:
            win, box = batch[0]
            size = (
                len(batch) if sizer is None else sizer.size(x.shape[0], (win.length, box.height, box.width), len(batch))
            )
            i = 0
            while i < len(batch):
                part = batch[i : i + size]
                try:
                    xs = torch.stack([crop(x, *p) for p in part])  # k B C t h w
                    out = fn(rearrange(xs, "k b c t h w -> (b k) c t h w"), part)
                except Exception as e:
                    if sizer is None or len(part) == 1 or not sizer.is_oom(e):
                        raise
                    failed = True
                else:
                    failed = False
                if failed:
                    # Outside the except block, so the failed call's tensors (held by the traceback) are gone
                    # before the sizer's hook asks the host to free its cache.
                    xs = out = None
                    size = sizer.halve(len(part))
                    continue
                out = rearrange(out, "(b k) c t h w -> k b c t h w", k=len(part))
                for j, p in enumerate(part):
                    pred = out[j] if post is None else post(out[j], xs[j], p)
                    acc.add(pred, self.weights[p], *p)
                if on_batch is not None:
                    on_batch(len(part))
                i += len(part)
        return acc.result().to(x.dtype)


def step_index(sigma: float, schedule: Sequence[float]) -> int:
    """Sampling step (0-based) of a model evaluation at noise level `sigma`, for a decreasing `schedule` of
    steps + 1 levels: step i covers (schedule[i + 1], schedule[i]]. Evaluations inside a step (2nd-order
    and multistep samplers) belong to it; one on the next level (Heun's correction) to the next step."""
    return sum(1 for s in schedule[1:-1] if s >= sigma * (1 - 1e-5))


@dataclass(frozen=True)
class FusionSchedule:
    """Which patches run and how they are fused at each sampling step.

    For WEIGHTED, AVERAGE and NAIVE every step runs the plan under that scheme. For SHIFTED, step i runs
    `grids[i % len(grids)]` (one base-size grid, no overlap, borders moved between consecutive steps) and the last
    `stitch.weighted_tail` steps run the plan under the paper's weighted scheme.
    """

    full: JointModulation  # the plan under the stitch's scheme (SHIFTED: weighted, with bridging patches)
    grids: tuple[JointModulation, ...]  # SHIFTED's grids, used in turn; empty for the other modes

    @classmethod
    def build(cls, plan: PatchPlan, stitch: StitchConfig, batch_size: int | None) -> FusionSchedule:
        full = JointModulation.build(plan, stitch, batch_size)
        if stitch.mode != StitchMode.SHIFTED:
            return cls(full, ())
        grids = tuple(
            overlapped_grid(grid, stitch, batch_size, stitch.grid_fade, stitch.grid_fade_t)
            for grid in shifted_grids(plan, *stitch.grid_args())
        )
        return cls(full, grids)

    def at(self, step: int, steps: int) -> JointModulation:
        """The joint modulation of sampling step `step` (0-based) out of `steps`."""
        if not self.grids or step >= steps - self.full.stitch.weighted_tail:
            return self.full
        return self.grids[step % len(self.grids)]
