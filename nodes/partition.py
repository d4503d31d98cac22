"""Patch partitioner: the plan of base and bridging patches, and a preview of it over the first frame."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..models.cost import DitSize, cost_text, run_totals
from ..models.plan import Geometry, target_hw, video_plan
from ..models.preview import plan_picture
from ..models.video import resize_frames
from .host import as_rgb, check_finite, check_frames, model_family
from .sockets import CATEGORY, PatchPlanType
from .validate import frames_error, widget_errors

PREVIEW_LONG_SIDE = 1024


def lr_video(images, latent, family) -> tuple[tuple[int, int], int, torch.Tensor | None]:
    """(LR size in pixels, pixel frames, first frame or None) of whichever input is connected."""
    if (images is None) == (latent is None):
        raise ValueError(
            "images / latent: connect exactly one: the LR video as IMAGE frames, or the LATENT of a Wan sampler."
        )
    if images is not None:
        images = as_rgb(images, "images")
        check_finite(images, "images")
        check_frames(images.shape[0], "images")
        return (images.shape[1], images.shape[2]), images.shape[0], images[0]
    x = latent["samples"]
    if x.ndim != 5 or x.shape[0] != 1:
        raise ValueError(
            f"latent: expected one video latent [1, C, T, H, W], got shape {list(x.shape)}. Upscale one clip at a time."
        )
    if x.shape[1] != family.latent_channels:
        raise ValueError(
            f"latent: {x.shape[1]} channels, but the model ({family.name}) uses {family.latent_channels}. "
            "Connect the latent made by this model family."
        )
    check_finite(x, "latent")
    s = family.spatial_stride
    return (x.shape[3] * s, x.shape[4] * s), (x.shape[2] - 1) * 4 + 1, None


@dataclass(frozen=True)
class PlanSettings:
    """The partitioner's widgets, by their input names: what the artist asks of a plan."""

    target: str = "2K"  # "2K", "4K" or "scale"
    scale: float = 2.0
    keep_aspect: bool = True
    patch_width: int = 0  # pixels; 0: the model's native size
    patch_height: int = 0
    window_frames: int = 0  # pixel frames (1 + 4k); 0: the model's native length


def plan_video(family, lr_hw: tuple[int, int], frames: int, settings: PlanSettings):
    """The patch plan for an LR video of `frames` frames at lr_hw pixels, or a ValueError naming the widget
    and a fix; the partitioner and the long-video path (one plan per chunk) make their plans here."""
    s = settings
    stride = family.spatial_stride
    out_hw = target_hw(lr_hw, s.target, s.scale, s.keep_aspect, stride)
    if out_hw[0] < lr_hw[0] or out_hw[1] < lr_hw[1]:
        raise ValueError(
            f"target: {s.target} gives {out_hw[1]}x{out_hw[0]}, smaller than the input {lr_hw[1]}x{lr_hw[0]}. "
            "Pick a larger preset or a scale >= 1."
        )
    ph = s.patch_height or family.native_hw[0]
    pw = s.patch_width or family.native_hw[1]
    cell = 2 * stride  # a patch side is a whole number of DiT tokens (2 latent cells)
    for name, v, limit in (("patch_height", ph, out_hw[0]), ("patch_width", pw, out_hw[1])):
        if v % cell:
            raise ValueError(
                f"{name}: {v} px is not a multiple of {cell} (two latent cells of {family.name}). Use {v // cell * cell or cell}."
            )
        if v > limit:
            # Only a size that is itself a multiple of the token cell is a possible fix.
            fix = (
                f"Lower {name} to at most {limit // cell * cell} or raise the target size"
                if limit >= cell
                else f"The target is smaller than the smallest patch ({cell} px): raise the scale or pick a preset"
            )
            raise ValueError(
                f"{name}: {v} px is larger than the target's {limit} px. {fix}; a patch cannot be larger than the frame."
            )
    message = frames_error("window_frames", s.window_frames, f"the model's {family.native_frames}")
    if message:
        raise ValueError(message)
    geometry = Geometry(family.name, family.latent_channels, stride, lr_hw, out_hw, (ph, pw), frames)
    return video_plan(geometry, s.window_frames or family.native_frames)


def dit_size(model) -> DitSize | None:
    """The DiT's widths and loaded size, for the memory estimate; None for a model without them."""
    dm = model.get_model_object("diffusion_model")
    dim, ffn = getattr(dm, "dim", None), getattr(dm, "ffn_dim", None)
    if dim is None or ffn is None:
        return None
    return DitSize(dim, ffn, model.model_size())


def preview(plan, first: torch.Tensor | None) -> torch.Tensor:
    """[1, h, w, 3] the grid over the first frame (or over grey when the input is a latent)."""
    H, W = plan.geometry.target_hw
    k = PREVIEW_LONG_SIDE / max(H, W)
    hw = (max(16, round(H * k)), max(16, round(W * k)))
    frame = resize_frames(first[None], hw)[0] if first is not None else torch.full((*hw, 3), 0.5)
    return plan_picture(frame, plan)[None]


class PatchPartitioner(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSR_Partitioner",
            display_name="PatchVSR Patch Partitioner",
            category=CATEGORY,
            description="Plans the patches: a base grid at the model's native size that tiles the output frame, "
            "bridging patches over every seam, and temporal windows for long clips.",
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="The Wan T2V model that will denoise the patches; sets the default patch size and latent layout.",
                ),
                io.Image.Input(
                    "images",
                    optional=True,
                    tooltip="The low-resolution video as frames (1 + 4k of them). Connect this or latent.",
                ),
                io.Latent.Input("latent", optional=True, tooltip="Or the latent straight from a Wan T2V sampler."),
                io.Combo.Input(
                    "target",
                    options=["2K", "4K", "scale"],
                    default="2K",
                    tooltip="Output size: 2K = 2560x1440, 4K = 3840x2160 (turned for portrait clips), or the input times 'scale'.",
                ),
                io.Float.Input(
                    "scale", default=2.0, min=1.0, max=8.0, step=0.25, tooltip="Upscale factor when target is 'scale'."
                ),
                io.Boolean.Input(
                    "keep_aspect",
                    default=True,
                    tooltip="With a 2K/4K preset: keep the input's aspect ratio inside the preset frame instead of filling it exactly.",
                ),
                io.Int.Input(
                    "patch_width",
                    default=0,
                    min=0,
                    max=4096,
                    step=16,
                    tooltip="Patch width in pixels; 0 = the model's native width (832 for Wan 2.1). 512 like the paper also works.",
                ),
                io.Int.Input(
                    "patch_height",
                    default=0,
                    min=0,
                    max=4096,
                    step=16,
                    tooltip="Patch height in pixels; 0 = the model's native height (480 for Wan 2.1).",
                ),
                # Step 1: the frontend snaps a typed value to a multiple of the step, so a step of 4 made 81
                # (Wan 2.1's native length) impossible to enter; values not 1 + 4k are refused at queue time.
                io.Int.Input(
                    "window_frames",
                    default=0,
                    min=0,
                    max=1025,
                    step=1,
                    tooltip="Frames per temporal window (1 + 4k); 0 = the model's native length (81 for Wan 2.1). Longer clips are split into overlapping windows.",
                ),
            ],
            outputs=[
                PatchPlanType.Output(
                    display_name="plan", tooltip="The immutable patch plan for the next PatchVSR nodes."
                ),
                io.Image.Output(
                    display_name="preview",
                    tooltip="The grid over the first frame: base patches solid blue, bridging patches dashed, the "
                    "shifted stitch's moved grid white dotted.",
                ),
                io.String.Output(
                    display_name="cost",
                    tooltip="What the plan costs: patches, windows, DiT patch evaluations per step and per run, "
                    "a memory estimate. Also shown on the node.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, target=None, window_frames=None):
        checked = widget_errors(cls, target=target, window_frames=window_frames)
        if checked is True and isinstance(window_frames, int):
            return frames_error("window_frames", window_frames, "the model's native length") or True
        return checked

    @classmethod
    def execute(cls, model, images=None, latent=None, **widgets) -> io.NodeOutput:
        family = model_family(model)
        lr_hw, frames, first = lr_video(images, latent, family)
        plan = plan_video(family, lr_hw, frames, PlanSettings(**widgets))
        cost = cost_text(plan, dit_size(model))
        # The frontend extension (js/patchvsr.js) shows the text on the node and, from each stitch mode's
        # run totals, the total for the sampler connected to the plan.
        ui = {"text": [cost], "patchvsr_cost": [run_totals(plan)]}
        return io.NodeOutput(plan, preview(plan, first), cost, ui=ui)
