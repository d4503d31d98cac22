"""Memory that adapts: what sampling keeps on the device besides the DiT's patch batches, how many patches
one DiT call takes, and halving that number when the device runs out of memory.

Pure PyTorch: the host's free memory, its per-input estimate and its out-of-memory test come in as
functions (nodes/patchwise.py passes ComfyUI's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

FP32_BYTES = 4  # ComfyUI's samplers keep the latent, noise and predictions in float32

# Full-size latents alive on the device while a model evaluation runs through the patch-wise wrapper, in
# float32 copies of the whole latent of one row. Measured with ComfyUI's own sampling path on the CPU
# (tests/benchmarks/sampler_memory.py: 15.1 copies at cfg 1, 19.0 at cfg 2 with euler; 13.9 and 18.8
# with dpmpp_2m), then moved to a GPU:
# 1. for the whole run: the sampler's noise, start latent, latent in model space, x, its last denoised
#    and derivative, ... (11.1 measured), plus the device copy of the start latent that a CPU run shares
#    with its input (1) and one copy of margin for samplers that keep more history (1);
SAMPLER_STATE = 13
# 2. per conditioning (positive, and negative at cfg != 1): calc_cond_batch's running sum and count, the
#    model's input, the wrapper's accumulator and fused prediction (3.9 measured), plus the half-size copy
#    in the compute dtype that a float32 CPU run does not make (0.5), rounded up.
PER_COND = 5
# The training-free global context keeps its low-passed global latent at full size (one row).
CONTEXT = 1
# ComfyUI batches cond and uncond rows in one call only when the call needs less than 1/1.5 of the free
# memory (samplers.calc_cond_batch); the automatic patch batch keeps the same headroom.
HEADROOM = 1.5


def sampler_frames(conds: int, context: bool) -> int:
    """Full-size float32 latents (of one row) the sampler keeps on the device while sampling."""
    assert conds in (1, 2), f"a PatchVSR run has 1 (cfg 1) or 2 conditionings, got {conds}"
    return SAMPLER_STATE + PER_COND * conds + (CONTEXT if context else 0)


def sampler_bytes(latent_shape: Sequence[int], conds: int, context: bool) -> int:
    """Bytes of the full-size latents ComfyUI's sampler keeps while the DiT runs patch batches.

    latent_shape: [C, T, H, W] of the full-size latent (one row). Linear in frames: a 4K clip of 81 frames
    (16 x 21 x 270 x 480) keeps 174 MB per copy, 3.1 GB at cfg 1 and 4.2 GB at cfg > 1 with the
    global context.
    """
    return sampler_frames(conds, context) * math.prod(latent_shape) * FP32_BYTES


# The model option newer hosts set with an attention override (upstream ComfyUI's
# ModelPatcher.set_model_optimized_attention): whether that attention's memory grows linearly with tokens.
MEMORY_EFFICIENT_ATTENTION = "optimized_attention_memory_efficient"


def host_estimate(base_model, model_options: dict, helper: Callable | None = None) -> Callable[[list[int]], float]:
    """shape -> bytes: the host's memory estimate for one model input shape, asked as the host's own sampler
    asks it, so the reservation built from it matches the host's. Newer hosts go through `helper` (upstream
    ComfyUI's comfy.model_patcher.call_model_memory_required, called by comfy/sampler_helpers.py
    estimate_memory with the model's MEMORY_EFFICIENT_ATTENTION option); older ones have only the model's
    own memory_required."""
    if helper is None:
        return lambda shape: base_model.memory_required(shape)
    flag = model_options.get(MEMORY_EFFICIENT_ATTENTION)
    return lambda shape: helper(base_model, shape, cond_shapes={}, memory_efficient_attention=flag)


def reserve_shape(
    memory_required: Callable[[list[int]], float], patch_shape: Sequence[int], extra_bytes: float
) -> list[int]:
    """The input shape whose memory estimate covers a patch batch plus `extra_bytes`.

    ComfyUI reserves memory before sampling from its estimate for one input shape (memory_required), so the
    full-size tensors are added to the estimate as more frames of the patch: patch_shape [B, C, t, h, w] ->
    [B, C, t', h, w], the fewest frames t' >= t with memory_required >= that of the patch + extra_bytes.
    Searched, not solved, so a host whose estimate is not linear in frames still gets enough.
    """
    b, c, t, h, w = patch_shape
    need = memory_required(list(patch_shape)) + extra_bytes

    def enough(frames: int) -> bool:
        return memory_required([b, c, frames, h, w]) >= need

    if extra_bytes <= 0 or enough(t):
        return list(patch_shape)
    lo, hi = t, 2 * t
    while not enough(hi):
        lo, hi = hi, 2 * hi
        assert hi < 2**40, f"the host's memory estimate does not grow with frames: {memory_required}"
    while hi - lo > 1:  # enough(hi), not enough(lo)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return [b, c, hi, h, w]


@dataclass
class BatchSizer:
    """How many patches of one shape go into one DiT call, for one sampling run.

    At most `limit` (the artist's patch_batch; None: as many as `fits`), at most what `fits` says the device
    holds now (None: no limit), and at most `cap`, which an out-of-memory error halves for the rest of the
    run: memory that ran out once stays short.
    """

    limit: int | None  # patches per call the artist asked for, None for automatic
    is_oom: Callable[[BaseException], bool]  # the host's test for an out-of-memory error
    # fits(rows, (t, h, w)) -> patches of that size with `rows` rows each that fit in free memory now
    fits: Callable[[int, tuple[int, int, int]], int] | None = None
    on_oom: Callable[[int], None] | None = None  # called with the halved size, after the failed call is freed
    cap: int | None = None  # halved on each out-of-memory error

    def size(self, rows: int, thw: tuple[int, int, int], available: int) -> int:
        """Patches for the next calls on `available` patches of size thw with `rows` rows each (>= 1)."""
        k = available
        for bound in (self.limit, self.cap):
            if bound is not None:
                k = min(k, bound)
        if self.fits is not None:
            k = min(k, self.fits(rows, thw))
        return max(1, k)

    def halve(self, size: int) -> int:
        """After an out-of-memory error on a call of `size` (> 1) patches: the size to retry it with."""
        assert size > 1, "a single patch that runs out of memory cannot be split"
        self.cap = size // 2
        if self.on_oom is not None:
            self.on_oom(self.cap)
        return self.cap
