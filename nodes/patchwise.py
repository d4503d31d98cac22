"""Patch-wise denoising inside ComfyUI's samplers, through the ModelPatcher's public wrapper hooks.

A DIFFUSION_MODEL wrapper receives the full-size latent at every model evaluation, runs the DiT on the
plan's patches in batches, and returns the fused prediction (multi-patch joint modulation). Any ComfyUI
sampler and scheduler therefore steps the fused latent, and the DiT only ever sees patch-sized inputs.
"""

from __future__ import annotations

import comfy.patcher_extension
import torch

from ..models import adapter_runtime as rt
from ..models.blend import StitchConfig
from ..models.context import anchor_low_frequency, global_lowpass, lowpass_sigma
from ..models.flow import noise_to
from ..models.joint import JointModulation, crop
from .host import Progress

WRAPPER_KEY = "patchvsr"


def _repeat_batch(value, k: int, batch: int):
    """Repeats tensors whose first dim is the batch k times (patch-major), leaving the rest alone."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return value.repeat(k, *([1] * (value.ndim - 1)))
    return value


class AdapterInputs:
    """What a trained adapter reads per patch: the LR patch latent noised to its t (fixed noise, so every
    step sees the same condition), the global latent with the patch's location mask, micro-conditions.
    Global tokens do not change between steps, so they are computed once per patch and cached."""

    def __init__(self, loaded, dm, plan, context, lr_latent: torch.Tensor, latent_format, seed: int):
        self.loaded, self.dm, self.plan, self.context = loaded, dm, plan, context
        cfg = loaded.config
        gen = torch.Generator().manual_seed(seed + 1)  # not the sampler's noise: an independent draw
        lr = latent_format.process_in(lr_latent.float())
        self.lr_noised = noise_to(lr, cfg.patch_noise_t, torch.randn(lr.shape, generator=gen))
        self.global_noised = latent_format.process_in(context.noised.float())
        self.box_index = {box: i for i, box in enumerate(plan.boxes)}
        self.tokens: dict = {}

    def _tokens(self, adapter, patch, device, dtype) -> torch.Tensor:
        if patch not in self.tokens:
            win, box = patch
            g = self.global_noised[:, :, win.t0 : win.t1].to(device, dtype)
            mask = rt.location_mask_volume(self.context.masks[self.box_index[box]][None], win.length).to(g)
            t = torch.full((1,), adapter.cfg.global_noise_t, device=device)
            prompt = rt.fixed_prompt(self.dm, 1, device, dtype)
            self.tokens[patch] = adapter.global_branch(
                g, mask, rt.time_modulation(self.dm, t, dtype), rt.rope_fn(self.dm, device, dtype), prompt
            )
        return self.tokens[patch]

    def call(self, patches, batch: int, device, dtype) -> rt.AdapterCall:
        adapter = self.loaded.patcher.model
        _, H, W = self.plan.latent_shape
        lr, micro, tokens = [], [], []
        for win, box in patches:
            lr.append(crop(self.lr_noised, win, box).to(device, dtype).expand(batch, -1, -1, -1, -1))
            frac = (box.y0 / H, box.x0 / W, box.y1 / H, box.x1 / W)
            micro.append(rt.micro_vector(self.plan.geometry.scale, adapter.cfg.patch_noise_t, frac, batch, device))
            tokens.append(self._tokens(adapter, (win, box), device, dtype).expand(batch, -1, -1))
        return rt.compute_call(self.dm, adapter, torch.cat(lr), torch.cat(micro), tokens=torch.cat(tokens))


class PatchwiseDiffusion:
    """The DIFFUSION_MODEL and PREPARE_SAMPLING wrappers of one sampling run."""

    def __init__(
        self, jm: JointModulation, context, latent_format, progress: Progress, adapter: AdapterInputs | None = None
    ):
        self.jm = jm
        self.context = context
        self.latent_format = latent_format
        self.progress = progress
        self.adapter = adapter
        self.step_ceiling = len(jm.batches)  # progress never runs ahead of the sampler's step count
        self._global_lp = None

    # PREPARE_SAMPLING: ComfyUI sizes model loading by the latent it sees; the DiT sees patch batches.
    # Newer hosts pass more arguments (0.33: force_full_load, force_offload): pass on whatever comes.
    def prepare_sampling(self, executor, model, noise_shape, conds, *args, **kwargs):
        t, h, w = max((p[0].length, p[1].height, p[1].width) for b in self.jm.batches for p in b)
        k = max(len(b) for b in self.jm.batches)
        patch_shape = [noise_shape[0] * k, noise_shape[1], t, h, w]
        return executor(model, patch_shape, conds, *args, **kwargs)

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
            if self.adapter is not None:
                opts[rt.CALL_KEY] = self.adapter.call(patches, batch, xs.device, xs.dtype)
            extra = {name: _repeat_batch(v, k, batch) for name, v in kwargs.items()}
            out = executor(xs, timestep.repeat(k), context.repeat(k, 1, 1), None, None, opts, **extra)
            self.progress.tick(1, self.step_ceiling - 1)
            return out

        return self.jm(x, run, post=self._anchor(x, sigmas))


def attach(
    model,
    plan,
    stitch: StitchConfig,
    context,
    patch_batch: int,
    progress: Progress,
    adapter=None,
    lr_latent=None,
    seed: int = 0,
):
    """A clone of `model` that denoises patch-wise (with the adapter's block patches when one is given);
    the input model is left untouched."""
    jm = JointModulation.build(plan, stitch, patch_batch)
    latent_format = model.get_model_object("latent_format")
    patched = model.clone()
    inputs = None
    if adapter is not None:
        dm = model.get_model_object("diffusion_model")
        inputs = AdapterInputs(adapter, dm, plan, context, lr_latent, latent_format, seed)
        for i, block in enumerate(dm.blocks):
            patched.set_model_patch_replace(rt.block_patch(adapter.patcher.model, i, block), "dit", "double_block", i)
        # ComfyUI loads and offloads the adapter's weights together with the model.
        patched.set_additional_models(WRAPPER_KEY, [adapter.patcher])
    wrapper = PatchwiseDiffusion(jm, context, latent_format, progress, inputs)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, wrapper)
    patched.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, WRAPPER_KEY, wrapper.prepare_sampling
    )
    return patched, wrapper
