"""Global-context encoder with location mask (PatchVSR section 3.2): the whole LR video at patch size."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..models.context import ContextConfig, location_masks
from ..models.video import resize_frames, resize_latent
from .encode import check_lr_input
from .host import FAMILIES, check_vae, vae_encode
from .sockets import CATEGORY, GlobalContextType, PatchPlanType


@dataclass(frozen=True)
class GlobalContext:
    config: ContextConfig
    latent: torch.Tensor  # [1, C, T, gh, gw] raw VAE latent of the whole video at patch size
    # [1, C, T, gh, gw] the seeded noise a trained global branch's input is noised with. The sampler adds it
    # in the model's normalised space (process_in), where the trainer adds it: noise added to the raw VAE
    # latent would reach the branch scaled and shifted per channel.
    noise: torch.Tensor
    masks: torch.Tensor  # [N, gh, gw] binary location mask of each of the plan's boxes
    plan_key: tuple  # (config, geometry) of the plan it was built for, to catch a context wired to another plan


def encode_context(plan, vae, cfg: ContextConfig, seed: int, frames: torch.Tensor | None = None,
                   latent: torch.Tensor | None = None) -> GlobalContext:  # fmt: skip
    """The global context of the LR video given as frames [N, h, w, 3] (encoded at patch size) or as a T2V
    latent [1, C, T, h', w'] (resized in latent space, already a whole-frame view); the context node and the
    long-video path (one context per chunk) build it here."""
    ph, pw = plan.geometry.patch_hw
    s = plan.geometry.spatial_stride
    lat = (
        vae_encode(vae, resize_frames(frames, (ph, pw)))
        if frames is not None
        else resize_latent(latent, (ph // s, pw // s))
    )
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(lat.shape, generator=gen).to(lat)
    masks = location_masks(plan, tuple(lat.shape[-2:]))
    return GlobalContext(cfg, lat, noise, masks, (plan.config, plan.geometry))


class GlobalContextEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSR_GlobalContext",
            display_name="PatchVSR Global Context",
            category=CATEGORY,
            description="Encodes the whole LR video at patch size with a location mask per patch. Without a trained "
            "adapter it keeps every patch's colour and tone anchored to the whole frame (strength 0 turns that off).",
            inputs=[
                PatchPlanType.Input("plan", tooltip="The plan from PatchVSR Patch Partitioner."),
                io.Vae.Input("vae", tooltip="The Wan VAE of the model family in the plan."),
                io.Image.Input(
                    "images", optional=True, tooltip="The LR frames, the same ones given to the partitioner."
                ),
                io.Latent.Input("latent", optional=True, tooltip="Or the LR latent from a Wan T2V sampler."),
                io.Float.Input(
                    "strength",
                    default=0.5,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="How strongly each patch's low frequencies (colour, tone) are pulled toward the whole-frame view at every step. 0 = off. With a trained adapter this anchoring is off unless anchor_with_adapter is on.",
                ),
                io.Float.Input(
                    "noise_t",
                    default=0.15,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Flow time the global latent is noised to for a trained global branch (paper: 0.15).",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Seed of the noise added to the global latent.",
                ),
                io.Boolean.Input(
                    "anchor_with_adapter",
                    default=False,
                    optional=True,
                    tooltip="Also anchor low frequencies when a trained adapter is connected to the sampler. Off: the adapter "
                    "uses the global view through its own global branch, as it was trained.",
                ),
            ],
            outputs=[
                GlobalContextType.Output(display_name="context", tooltip="The global context for PatchVSR Sampler.")
            ],
        )

    @classmethod
    def execute(cls, plan, vae, strength, noise_t, seed, images=None, latent=None,
                anchor_with_adapter=False) -> io.NodeOutput:  # fmt: skip
        check_vae(vae, FAMILIES[plan.geometry.latent_channels])
        images = check_lr_input(plan, images, latent)
        cfg = ContextConfig(strength=strength, noise_t=noise_t, with_adapter=anchor_with_adapter)
        lat = latent["samples"] if latent is not None else None
        return io.NodeOutput(encode_context(plan, vae, cfg, seed, frames=images, latent=lat))
