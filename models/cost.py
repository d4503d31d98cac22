"""What a plan will cost before it runs: patch counts, DiT evaluations per step and per run, and a memory
estimate, for the artist to read on the partitioner node. The counts are the ones the sampler's wrapper
runs (joint.FusionSchedule), not a separate model of them.

Units: a "patch evaluation" is one patch in one temporal window through the DiT once (one row of a DiT
batch). At cfg != 1 ComfyUI adds an uncond row per patch; at cfg 1 it skips the uncond pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from .blend import StitchConfig, StitchMode
from .joint import FusionSchedule
from .memory import sampler_frames
from .plan import Kind, PatchPlan, Window

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
    """Patch evaluations of each sampling step at one model evaluation per step and cfg 1: the patches
    joint.FusionSchedule runs at that step (its weights are not built)."""
    return FusionSchedule.build(plan, stitch, None).patches_per_step(steps)


def total_evaluations(plan: PatchPlan, stitch: StitchConfig, steps: int, cfg: float) -> int:
    """Patch evaluations of a whole run with a first-order sampler (one model evaluation per step)."""
    return sum(evaluations_per_step(plan, stitch, steps)) * (1 if cfg == 1.0 else 2)


# Step counts whose totals the cost text shows: few-step runs (distilled LoRAs at cfg 1), then 20 and 50.
SHOWN_STEPS = (4, 8, 20, 50)


def patch_tokens(window, box) -> int:
    """DiT tokens of one patch: its latent cells in 1 x 2 x 2 tokens, a partial token counted whole."""
    return -(-window.length // DIT_PATCH[0]) * -(-box.height // DIT_PATCH[1]) * -(-box.width // DIT_PATCH[2])


def token_ratio(plan: PatchPlan, stitch: StitchConfig, steps: int) -> float:
    """DiT tokens per step of a `steps`-step run, over the clip's own (the base grid run once over it)."""
    schedule = FusionSchedule.build(plan, stitch, None)
    per_layout = [sum(patch_tokens(*p) for batch in jm.batches for p in batch) for jm in schedule.layouts]
    whole = Window(0, plan.latent_shape[0])  # the clip once, without the paper's window overlaps
    frame = sum(patch_tokens(whole, b) for b in plan.base_boxes())
    return sum(per_layout[schedule.index(i, steps)] for i in range(steps)) / steps / frame


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


def video_bytes(plan: PatchPlan) -> int:
    """The decoded output as ComfyUI's IMAGE (frames x H x W x 3 float32), held whole by the video nodes."""
    g = plan.geometry
    return g.frames * g.target_hw[0] * g.target_hw[1] * 3 * FLOAT32


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


# Steps the frontend can look totals up for: the sampler's `steps` widget goes to 1000.
MAX_STEPS = 1000


def run_totals(plan: PatchPlan, max_steps: int = MAX_STEPS) -> dict[str, list[int]]:
    """{mode: [patch evaluations of a run of 1, 2, ..., max_steps steps at cfg 1]}, for the frontend's
    total of a connected sampler (js/patchvsr.js looks it up: no second copy of the per-step rule there)."""
    out = {}
    for mode in StitchMode:
        schedule = FusionSchedule.build(plan, StitchConfig(mode), None)
        counts = [jm.num_patches for jm in schedule.layouts]
        out[mode.value] = [sum(counts[schedule.index(i, s)] for i in range(s)) for s in range(1, max_steps + 1)]
    return out


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
    counts = {
        m: [jm.num_patches for jm in FusionSchedule.build(plan, StitchConfig(m), None).layouts] for m in StitchMode
    }
    *rotation, final = counts[StitchMode.SHIFTED]
    lines.append(
        "DiT patch evaluations per step (one model call per step, e.g. euler; x2 when cfg != 1): "
        f"weighted / average {counts[StitchMode.WEIGHTED][0]}; naive {counts[StitchMode.NAIVE][0]}; shifted "
        f"{' / '.join(map(str, rotation))} in turn (base grid, white dotted moved grid), {final} on the last step "
        "(cells centred on the base grid's borders)."
    )
    runs = "; ".join(
        f"{s} steps: weighted {total_evaluations(plan, StitchConfig(StitchMode.WEIGHTED), s, 1.0)}, shifted "
        f"{total_evaluations(plan, StitchConfig(StitchMode.SHIFTED), s, 1.0)} ({token_ratio(plan, StitchConfig(), s):.2f}x "
        "the frame's tokens per step)"
        for s in SHOWN_STEPS
    )
    lines.append(f"Per run at cfg 1 (x2 at cfg != 1): {runs}.")
    if dit is not None:
        lines.append(
            f"Memory estimate: DiT about {_size(dit_peak_bytes(plan, dit, rows))} ({_size(dit.weight_bytes)} weights "
            f"+ {rows} patch rows of {tokens(plan)} tokens: patch_batch 1 at cfg != 1)."
        )
    if g is not None:
        lines.append(
            f"Full-frame tensors: latent {_size(latent_bytes(plan))} each; the sampler keeps {sampler_frames(1, False)} "
            f"of them at cfg 1, {sampler_frames(2, False)} at cfg != 1, one more with the global context "
            f"({_size(sampler_frames(1, False) * latent_bytes(plan))} to {_size(sampler_frames(2, True) * latent_bytes(plan))}); "
            f"decoded video {_size(video_bytes(plan))} (frames x H x W x 3 float32)."
        )
    return "\n".join(lines)
