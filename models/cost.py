"""What a plan will cost before it runs: patch counts, DiT evaluations per step and per run, and a memory
estimate, for the artist to read on the partitioner node. The counts are the ones the sampler's wrapper
runs (joint.FusionSchedule), not a separate model of them.

Units: a "patch evaluation" is one patch in one temporal window through the DiT once (one row of a DiT
batch). At cfg != 1 ComfyUI adds an uncond row per patch; at cfg 1 it skips the uncond pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from .blend import StitchConfig, StitchMode, patch_list
from .plan import Kind, PatchPlan, shifted_grids

DIT_PATCH = (1, 2, 2)  # Wan's DiT makes one token of 1 x 2 x 2 latent cells (t, h, w)
FLOAT32 = 4


@dataclass(frozen=True)
class DitSize:
    """What sizes the DiT's memory: read from the host's model by the node."""

    dim: int  # hidden width (1536 for Wan 2.1 1.3B)
    ffn_dim: int  # feed-forward width (8960 for Wan 2.1 1.3B)
    weight_bytes: int  # the loaded weights, as ComfyUI counts them
    activation_bytes: int = 2  # bytes per activation value (fp16 / bf16 inference)


def evaluations_per_step(plan: PatchPlan, stitch: StitchConfig, steps: int) -> list[int]:
    """Patch evaluations of each sampling step at one model evaluation per step and cfg 1, as
    joint.FusionSchedule.at picks the step's patches (without building its weights)."""
    full = len(patch_list(plan, stitch))
    if stitch.mode != StitchMode.SHIFTED:
        return [full] * steps
    grids = [len(g.base_boxes()) * len(g.windows) for g in shifted_grids(plan, *stitch.grid_args())]
    return [full if i >= steps - stitch.weighted_tail else grids[i % len(grids)] for i in range(steps)]


def total_evaluations(plan: PatchPlan, stitch: StitchConfig, steps: int, cfg: float) -> int:
    """Patch evaluations of a whole run with a first-order sampler (one model evaluation per step)."""
    return sum(evaluations_per_step(plan, stitch, steps)) * (1 if cfg == 1.0 else 2)


def tokens(plan: PatchPlan) -> int:
    """DiT tokens of the largest patch in the largest window."""
    t = max(w.length for w in plan.windows)
    h, w = max(b.height for b in plan.boxes), max(b.width for b in plan.boxes)
    return -(-t // DIT_PATCH[0]) * -(-h // DIT_PATCH[1]) * -(-w // DIT_PATCH[2])


def dit_peak_bytes(plan: PatchPlan, dit: DitSize, rows: int) -> int:
    """Estimated DiT peak: the weights plus one batch of `rows` patches through a block, counting the
    feed-forward's hidden layer and about four residual-width tensors per token (memory-efficient
    attention, as ComfyUI uses on GPUs: no tokens x tokens matrix)."""
    return dit.weight_bytes + rows * tokens(plan) * (dit.ffn_dim + 4 * dit.dim) * dit.activation_bytes


def latent_bytes(plan: PatchPlan) -> int:
    """One float32 tensor of the full-size latent."""
    T, H, W = plan.latent_shape
    channels = plan.geometry.latent_channels if plan.geometry is not None else 16
    return channels * T * H * W * FLOAT32


# The sampler holds about this many full-size latents at once: the input, the noise, the sampler's x and
# its denoised prediction, the accumulator's weighted sum, and a multistep sampler's history.
LATENTS_HELD = 6


def video_bytes(plan: PatchPlan) -> int:
    """The decoded output as ComfyUI's IMAGE (frames x H x W x 3 float32), held whole by the video nodes."""
    g = plan.geometry
    return g.frames * g.target_hw[0] * g.target_hw[1] * 3 * FLOAT32


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def per_step(plan: PatchPlan) -> dict:
    """Patch evaluations per step of each stitch mode (cfg 1), for the frontend's total of a connected run:
    SHIFTED's steps take `shifted[i % 2]`, its last `weighted_tail` steps `weighted`."""
    shifted = StitchConfig(StitchMode.SHIFTED)
    grids = evaluations_per_step(plan, shifted, 3)[:2]
    return {
        "weighted": len(patch_list(plan, StitchConfig(StitchMode.WEIGHTED))),
        "average": len(patch_list(plan, StitchConfig(StitchMode.AVERAGE))),
        "naive": len(patch_list(plan, StitchConfig(StitchMode.NAIVE))),
        "shifted": grids,
        "weighted_tail": shifted.weighted_tail,
    }


def cost_text(plan: PatchPlan, dit: DitSize | None = None, rows: int = 2) -> str:
    """The partitioner's cost summary; `rows`: patch rows per DiT call for the memory estimate (patch_batch,
    x2 at cfg != 1)."""
    g = plan.geometry
    T, H, W = plan.latent_shape
    n_rows, n_cols = len(plan.row_edges) - 1, len(plan.col_edges) - 1
    lines = []
    if g is not None:
        lines.append(
            f"Output {g.target_hw[1]}x{g.target_hw[0]} from {g.lr_hw[1]}x{g.lr_hw[0]} ({g.scale:.2f}x), "
            f"{g.frames} frame(s); patch {g.patch_hw[1]}x{g.patch_hw[0]} px; latent {T}x{H}x{W}."
        )
    lines.append(
        f"Base grid {n_rows} rows x {n_cols} columns = {plan.count(Kind.BASE)} patches (solid blue); "
        f"{len(plan.aux_boxes())} bridging patches (dashed: {plan.count(Kind.AUX_H)} red across vertical seams, "
        f"{plan.count(Kind.AUX_V)} orange across horizontal seams, {plan.count(Kind.AUX_X)} magenta on intersections)."
    )
    lines.append(
        f"{len(plan.windows)} temporal window(s) of up to {max(w.length for w in plan.windows)} latent frames."
    )
    n = per_step(plan)
    a, b = n["shifted"]
    lines.append(
        "DiT patch evaluations per step (one model call per step, e.g. euler; x2 when cfg != 1): "
        f"weighted / average {n['weighted']}; shifted {a} and {b} on alternating steps (white dotted: the moved "
        f"grid), {n['weighted']} on the last; naive {n['naive']}."
    )
    lines.append(
        f"Per run of S steps at cfg 1: weighted S x {n['weighted']}; shifted {n['weighted']} + "
        f"{a} x ceil((S-1)/2) + {b} x floor((S-1)/2); twice that at cfg != 1."
    )
    if dit is not None:
        lines.append(
            f"Memory estimate: DiT about {_size(dit_peak_bytes(plan, dit, rows))} ({_size(dit.weight_bytes)} weights "
            f"+ {rows} patch rows of {tokens(plan)} tokens: patch_batch 1 at cfg != 1)."
        )
    if g is not None:
        lines.append(
            f"Full-frame tensors: latent {_size(latent_bytes(plan))} each (the sampler holds about {LATENTS_HELD}); "
            f"decoded video {_size(video_bytes(plan))} (frames x H x W x 3 float32)."
        )
    return "\n".join(lines)
