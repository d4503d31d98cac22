"""Multi-patch joint modulation (PatchVSR section 3.3): every overlapping patch prediction is fused at
every denoising step, so neighbouring patches agree before the next step starts from the fused latent.

Dimension legend: B batch, C channels, T latent frames, H latent rows, W latent columns, k patches in a
batch. The fused result is a weighted mean, so it does not depend on the order patches run in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from einops import rearrange

from .blend import Accumulator, StitchConfig, StitchMode, grid_patches, patch_list, profile_volume, weight_volume
from .memory import BatchSizer
from .plan import Box, PatchPlan, Window, final_grid, shifted_grids

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


@dataclass(frozen=True)
class JointModulation:
    """One layout of patches grouped into DiT batches, with the fusion weight of each; the weights are made
    on first use (the cost text counts patches without them)."""

    plan: PatchPlan  # the grid whose patches these are (for SHIFTED a rotation grid or the final grid)
    stitch: StitchConfig
    batches: tuple[tuple[Patch, ...], ...]
    weigh: Callable[[Patch], torch.Tensor]  # a patch's [t, h, w] fusion weight (models/blend.py)

    @classmethod
    def build(cls, plan: PatchPlan, stitch: StitchConfig, batch_size: int | None) -> JointModulation:
        """The plan's own patches (with bridging patches for WEIGHTED and AVERAGE), as fused in those modes."""
        assert batch_size is None or batch_size >= 1, f"patch batch size must be >= 1 or None, got {batch_size}"
        return cls(
            plan, stitch, _group(patch_list(plan, stitch), batch_size), lambda p: weight_volume(plan, stitch, *p)
        )

    @classmethod
    def grid(cls, grid: PatchPlan, stitch: StitchConfig, batch_size: int | None, fade: int, fade_t: int | None):
        """A grid that tiles the latent (one of SHIFTED's), each cell grown into its neighbours and
        cross-faded over `fade` cells around every border, and over `fade_t` frames in time (None: the
        grid's windows overlap already, as the paper's do; blend.grid_patches)."""
        profiles = grid_patches(grid, fade, fade_t)
        return cls(grid, stitch, _group(list(profiles), batch_size), lambda p: profile_volume(profiles[p]))

    @cached_property
    def weights(self) -> dict:
        """{patch: [t, h, w] fusion weight}."""
        return {p: self.weigh(p) for batch in self.batches for p in batch}

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
    """Which patches run, and how they are fused, at each sampling step: the one owner of that rule (the
    sampler's wrapper, the cost text and the frontend's totals all ask it).

    WEIGHTED, AVERAGE and NAIVE run the plan under that scheme at every step. SHIFTED runs one base-size
    grid per step, no two consecutive steps sharing a border (plan.shifted_grids, used in turn so that the
    step before the last runs the base grid), and on the last step plan.final_grid, whose cells are centred
    on the base grid's borders, with a wider cross-fade (StitchConfig.final_fade), in the plan's own
    overlapping windows (on a clip longer than one window the paper's temporal fusion, at the last step only).
    """

    plan: PatchPlan  # the partitioner's plan
    stitch: StitchConfig
    layouts: tuple[JointModulation, ...]  # SHIFTED: the rotation grids, then the final grid; else one

    @classmethod
    def build(cls, plan: PatchPlan, stitch: StitchConfig, batch_size: int | None) -> FusionSchedule:
        if stitch.mode != StitchMode.SHIFTED:
            return cls(plan, stitch, (JointModulation.build(plan, stitch, batch_size),))
        base, moved = shifted_grids(plan, *stitch.grid_args())
        rotation = [
            JointModulation.grid(grid, stitch, batch_size, stitch.grid_fade, stitch.grid_fade_t)
            for grid in (*base, *moved)
        ]
        final = JointModulation.grid(final_grid(plan), stitch, batch_size, stitch.final_fade, None)
        return cls(plan, stitch, (*rotation, final))

    def index(self, step: int, steps: int) -> int:
        """Layout of sampling step `step` (0-based) out of `steps`: for SHIFTED, the final grid on the last
        step; before it, the base and moved grids alternate, counted back from the last step so that the
        step before it always runs the base grid (half a cell from every final border), while the temporal
        phases follow the step number."""
        if len(self.layouts) == 1:
            return 0
        phases = (len(self.layouts) - 1) // 2  # layouts: base x phases, moved x phases, final
        if step >= steps - 1:
            return 2 * phases
        return ((step - (steps - 2)) % 2) * phases + step % phases

    def at(self, step: int, steps: int) -> JointModulation:
        """The joint modulation of sampling step `step` (0-based) out of `steps`."""
        return self.layouts[self.index(step, steps)]

    def patches_per_step(self, steps: int) -> list[int]:
        """Patch evaluations of each step of a `steps`-step run (one model evaluation per step, one row)."""
        counts = [jm.num_patches for jm in self.layouts]
        return [counts[self.index(i, steps)] for i in range(steps)]
