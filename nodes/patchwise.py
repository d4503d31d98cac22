"""Patch-wise denoising inside ComfyUI's samplers, through the ModelPatcher's public wrapper hooks.

A DIFFUSION_MODEL wrapper receives the full-size latent at every model evaluation, runs the DiT on the
plan's patches in batches, and returns the fused prediction (multi-patch joint modulation). Any ComfyUI
sampler and scheduler therefore steps the fused latent, and the DiT only ever sees patch-sized inputs.
"""

from __future__ import annotations

import comfy.patcher_extension
import torch

from ..models.blend import StitchConfig
from ..models.context import anchor_low_frequency, global_lowpass, lowpass_sigma
from ..models.joint import JointModulation, crop
from .host import Progress

WRAPPER_KEY = "patchvsr"


def _repeat_batch(value, k: int, batch: int):
    """Repeats tensors whose first dim is the batch k times (patch-major), leaving the rest alone."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return value.repeat(k, *([1] * (value.ndim - 1)))
    return value


class PatchwiseDiffusion:
    """The DIFFUSION_MODEL and PREPARE_SAMPLING wrappers of one sampling run."""

    def __init__(self, jm: JointModulation, context, latent_format, progress: Progress):
        self.jm = jm
        self.context = context
        self.latent_format = latent_format
        self.progress = progress
        self.step_ceiling = len(jm.batches)  # progress never runs ahead of the sampler's step count
        self._global_lp = None

    # PREPARE_SAMPLING: ComfyUI sizes model loading by the latent it sees; the DiT sees patch batches.
    def prepare_sampling(self, executor, model, noise_shape, conds, model_options=None):
        t, h, w = max((p[0].length, p[1].height, p[1].width) for b in self.jm.batches for p in b)
        k = max(len(b) for b in self.jm.batches)
        patch_shape = [noise_shape[0] * k, noise_shape[1], t, h, w]
        return executor(model, patch_shape, conds, model_options=model_options)

    def on_step(self, step: int) -> None:
        self.step_ceiling = (step + 2) * len(self.jm.batches)
        self.progress.set((step + 1) * len(self.jm.batches))

    def _anchor(self, x: torch.Tensor, sigmas: torch.Tensor):
        """The training-free global context: a per-patch post-processing of the prediction, or None."""
        ctx = self.context
        if ctx is None or ctx.config.strength == 0.0:
            return None
        sigma_px = lowpass_sigma(self.jm.plan, ctx.config)
        if self._global_lp is None or self._global_lp.device != x.device:
            g = self.latent_format.process_in(ctx.latent.to(x.device, torch.float32))
            self._global_lp = global_lowpass(g, self.jm.plan, sigma_px)

        def post(v, x_patch, patch):
            # x0 = x - sigma v (rectified flow); anchor x0's low frequencies, then back to a velocity.
            s = sigmas.view(-1, 1, 1, 1, 1).to(v)
            x0 = x_patch - s * v
            x0 = anchor_low_frequency(x0, crop(self._global_lp, *patch).to(v), ctx.config.strength, sigma_px)
            return (x_patch - x0) / s.clamp_min(1e-6)

        return post

    # DIFFUSION_MODEL: WanModel.forward(x, timestep, context, clip_fea, time_dim_concat, transformer_options)
    def __call__(
        self, executor, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options={}, **kwargs
    ):
        if clip_fea is not None or time_dim_concat is not None:
            raise ValueError(
                "model: image or time-concat conditions reached PatchVSR's sampler; use a Wan T2V model and text conditioning."
            )
        batch = x.shape[0]
        sigmas = transformer_options.get("sigmas", timestep / 1000.0)  # [B] flow time of each batch row

        def run(xs, patches):
            self.progress.check()  # cancel lands within one patch batch
            k = len(patches)
            opts = dict(transformer_options, patchvsr={"patches": tuple(patches), "batch": batch})
            extra = {name: _repeat_batch(v, k, batch) for name, v in kwargs.items()}
            out = executor(xs, timestep.repeat(k), context.repeat(k, 1, 1), None, None, opts, **extra)
            self.progress.tick(1, self.step_ceiling - 1)
            return out

        return self.jm(x, run, post=self._anchor(x, sigmas))


def attach(model, plan, stitch: StitchConfig, context, patch_batch: int, progress: Progress):
    """A clone of `model` that denoises patch-wise; the input model is left untouched."""
    jm = JointModulation.build(plan, stitch, patch_batch)
    wrapper = PatchwiseDiffusion(jm, context, model.get_model_object("latent_format"), progress)
    patched = model.clone()
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, wrapper)
    patched.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, WRAPPER_KEY, wrapper.prepare_sampling
    )
    return patched, wrapper
