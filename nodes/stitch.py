"""Latent stitcher with blend weight: the single owner of the fusion weights."""

from __future__ import annotations

import torch.nn.functional as F
from comfy_api.latest import io

from ..models.blend import StitchConfig, StitchMode, weight_maps
from ..models.plan import PlanConfig, make_plan
from ..models.preview import weight_picture
from .sockets import CATEGORY, PatchPlanType, StitcherType
from .validate import widget_errors

# Shown when no plan is connected: a 3x3 grid of 32-cell patches.
EXAMPLE_PLAN = PlanConfig((1, 96, 96), (32, 32), 1)


class LatentStitcher(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSR_Stitcher",
            display_name="PatchVSR Latent Stitcher",
            category=CATEGORY,
            description="How overlapping patch predictions are fused at every denoising step: sum(w * x) / sum(w). "
            "'shifted' costs about the base grid per step; 'weighted' is the paper's scheme; 'average' and 'naive' are there to compare.",
            inputs=[
                io.Combo.Input(
                    "mode",
                    options=[m.value for m in StitchMode],
                    default=StitchConfig().mode.value,
                    tooltip="shifted (default): each step runs one grid without bridging patches, its borders moved between "
                    "steps, the last step a grid whose cells are centred on the base grid's seams (about 1.1x the base grid's "
                    "cost at 4-50 steps). weighted: the paper's scheme, bridging patches over every seam at every step, fading "
                    "linearly from their centre line, the intersection patch amplified (2.9x at 2K, 3.2x at 4K). average: all "
                    "patches count the same (shows 'black holes'). naive: base grid only, no bridging patches (shows seams).",
                ),
                io.Float.Input(
                    "blend_weight",
                    default=5.0,
                    min=1.0,
                    max=50.0,
                    step=0.5,
                    tooltip="Amplification of the patch shared at four-patch intersections (paper supplement: 5.0).",
                ),
                PatchPlanType.Input(
                    "plan",
                    optional=True,
                    tooltip="Optional: show the weight maps of this plan instead of an example grid.",
                ),
            ],
            outputs=[
                StitcherType.Output(display_name="stitcher", tooltip="Connect to PatchVSR Sampler."),
                io.Image.Output(
                    display_name="weights",
                    tooltip="Each patch kind's share of the weight: base blue, horizontal bridges red, vertical orange, intersections "
                    "magenta; for 'shifted', its last step's cells in blue and magenta, cross-faded.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, mode=None):
        return widget_errors(cls, mode=mode)

    @classmethod
    def execute(cls, mode, blend_weight, plan=None) -> io.NodeOutput:
        cfg = StitchConfig(StitchMode(mode), blend_weight)
        shown = plan if plan is not None else make_plan(EXAMPLE_PLAN)
        picture = weight_picture(weight_maps(shown, cfg))  # h w 3
        # Latent cells are small; show each as a few pixels so the profiles are visible.
        k = max(1, 512 // max(picture.shape[:2]))
        picture = F.interpolate(picture.permute(2, 0, 1)[None], scale_factor=k, mode="nearest")[0].permute(1, 2, 0)
        return io.NodeOutput(cfg, picture[None])
