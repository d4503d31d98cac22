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
from ..models.context import anchor_low_frequency, global_lowpass, location_mask, lowpass_sigma
from ..models.flow import noise_to
from ..models.joint import FusionSchedule, crop, patch_rows, patch_timesteps, step_index
from .host import Progress

WRAPPER_KEY = "patchvsr"


# Conditioning a T2V Wan can receive that is not a per-row tensor PatchVSR could cut into patches. The
# sampler node refuses these before sampling (sampler.check_conditioning); the wrapper checks again, since
# another extension can add conditioning after the node has looked.
UNCUT_MODEL_INPUTS = {
    "reference_latent": "a reference latent (reference-image nodes)",
    "context_latents": "in-context reference latents",
    "control": "a ControlNet's hints",
}


class AdapterInputs:
    """What a trained adapter reads per patch: the LR patch latent noised to its t (fixed noise, so every
    step sees the same condition), the global latent with the patch's location mask, micro-conditions.
    Global tokens do not change between steps, so they are computed once per patch and cached."""

    def __init__(self, loaded, dm, plan, context, lr_latent: torch.Tensor, latent_format, seed: int):
        self.loaded, self.dm, self.plan, self.context = loaded, dm, plan, context
        cfg = loaded.config
        gen = torch.Generator().manual_seed((seed + 1) % 2**64)  # not the sampler's noise: independent
        lr = latent_format.process_in(lr_latent.float())
        self.lr_noised = noise_to(lr, cfg.patch_noise_t, torch.randn(lr.shape, generator=gen))
        self.global_noised = latent_format.process_in(context.noised.float())
        self.box_index = {box: i for i, box in enumerate(plan.boxes)}
        self.tokens: dict = {}

    def _tokens(self, adapter, patch, device, dtype) -> torch.Tensor:
        if patch not in self.tokens:
            win, box = patch
            g = self.global_noised[:, :, win.t0 : win.t1].to(device, dtype)
            mask = rt.location_mask_volume(self._mask(box)[None], win.length).to(g)
            t = torch.full((1,), adapter.cfg.global_noise_t, device=device)
            prompt = rt.fixed_prompt(self.dm, 1, device, dtype)
            self.tokens[patch] = adapter.global_branch(
                g, mask, rt.time_modulation(self.dm, t, dtype), rt.rope_fn(self.dm, device, dtype), prompt
            )
        return self.tokens[patch]

    def _mask(self, box) -> torch.Tensor:
        """[gh, gw] location mask of `box`: the context's own for the plan's boxes; the shifted grids' boxes
        are not in the plan, so theirs are drawn here the same way."""
        if box in self.box_index:
            return self.context.masks[self.box_index[box]]
        return location_mask(box, self.plan.latent_shape[1:], tuple(self.context.masks.shape[-2:]))

    def call(self, patches, batch: int, device, dtype) -> rt.AdapterCall:
        """The adapter's per-patch inputs for one DiT call, rows batch-major like the latent crops."""
        adapter = self.loaded.patcher.model
        _, H, W = self.plan.latent_shape
        lr, micro, tokens = [], [], []
        for win, box in patches:
            lr.append(crop(self.lr_noised, win, box).to(device, dtype))
            frac = (box.y0 / H, box.x0 / W, box.y1 / H, box.x1 / W)
            micro.append(rt.micro_vector(self.plan.geometry.scale, adapter.cfg.patch_noise_t, frac, 1, device))
            tokens.append(self._tokens(adapter, (win, box), device, dtype))

        def rows(parts):  # k x [1, ...] -> [(B k), ...]
            return torch.cat(parts).repeat(batch, *([1] * (parts[0].ndim - 1)))

        return rt.compute_call(self.dm, adapter, rows(lr), rows(micro), tokens=rows(tokens))


class PatchwiseDiffusion:
    """The DIFFUSION_MODEL and PREPARE_SAMPLING wrappers of one sampling run."""

    def __init__(
        self,
        schedule: FusionSchedule,
        context,
        latent_format,
        progress: Progress,
        adapter: AdapterInputs | None = None,
    ):
        self.schedule = schedule
        self.jm = schedule.full  # the plan under the stitch's scheme: the largest patch batches of any step
        self.context = context
        self.latent_format = latent_format
        self.progress = progress
        self.adapter = adapter
        self.sigmas: list[float] | None = None  # the run's noise levels, from set_sigmas
        self.done = [0, len(self.jm.batches)]  # DiT calls done by the end of each step, from set_sigmas
        self.step_ceiling = self.done[1]  # progress never runs ahead of the sampler's step count
        self._global_lp = None

    def set_sigmas(self, sigmas: torch.Tensor) -> int:
        """The run's noise levels (steps + 1), which tell each model evaluation its step; returns the
        run's DiT calls at one evaluation per step (the progress bar's total)."""
        self.sigmas = [float(s) for s in sigmas]
        steps = len(self.sigmas) - 1
        self.done = [0]
        for i in range(steps):
            self.done.append(self.done[-1] + len(self.schedule.at(i, steps).batches))
        self.step_ceiling = self.done[min(1, steps)]
        return self.done[-1]

    def _joint(self, sigma: float, transformer_options):
        """The joint modulation of the evaluation at `sigma`: its step's, by where sigma sits in the run."""
        levels = self.sigmas if self.sigmas is not None else transformer_options.get("sample_sigmas")
        if levels is None or not self.schedule.grids:
            return self.schedule.full
        levels = [float(s) for s in levels]
        return self.schedule.at(step_index(sigma, levels), len(levels) - 1)

    # PREPARE_SAMPLING: ComfyUI sizes model loading by the latent it sees; the DiT sees patch batches.
    # Newer hosts pass more arguments (0.33: force_full_load, force_offload): pass on whatever comes.
    def prepare_sampling(self, executor, model, noise_shape, conds, *args, **kwargs):
        batches = [b for jm in (self.schedule.full, *self.schedule.grids) for b in jm.batches]
        t, h, w = max((p[0].length, p[1].height, p[1].width) for b in batches for p in b)
        k = max(len(b) for b in batches)
        patch_shape = [noise_shape[0] * k, noise_shape[1], t, h, w]
        return executor(model, patch_shape, conds, *args, **kwargs)

    def on_step(self, step: int, preview=None) -> None:
        last = len(self.done) - 1
        self.step_ceiling = self.done[min(step + 2, last)]
        self.progress.set(self.done[min(step + 1, last)], preview=preview)

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

    # DIFFUSION_MODEL: WanModel.forward(x, timestep, context, clip_fea, time_dim_concat, transformer_options,
    # **kwargs); newer hosts may add arguments, which are passed on (tensors with a batch dim per patch).
    def __call__(
        self,
        executor,
        x,
        timestep,
        context,
        clip_fea=None,
        time_dim_concat=None,
        transformer_options={},
        *args,
        **kwargs,
    ):
        if clip_fea is not None or time_dim_concat is not None:
            raise ValueError(
                "model: image or time-concat conditions reached PatchVSR's sampler; use a Wan T2V model and text conditioning."
            )
        uncut = [what for name, what in UNCUT_MODEL_INPUTS.items() if kwargs.get(name) is not None]
        if uncut:
            raise ValueError(
                f"positive/negative: {', '.join(uncut)} reached PatchVSR's sampler; it cannot be cut into patches. "
                "Remove the node that adds it, or sample without PatchVSR."
            )
        batch = x.shape[0]
        thw = tuple(x.shape[2:])
        # [B] flow time of each batch row: ComfyUI gives one sigma per latent row, repeated per cond chunk.
        sig = transformer_options.get("sigmas", timestep.reshape(batch, -1)[:, 0] / 1000.0).reshape(-1)
        sigmas = sig.repeat(batch // sig.numel()) if batch % sig.numel() == 0 else sig[:1].expand(batch)

        def run(xs, patches):
            self.progress.check()  # cancel lands within one patch batch
            k = len(patches)
            opts = dict(transformer_options, patchvsr={"patches": tuple(patches), "batch": batch})
            if self.adapter is not None:
                opts[rt.CALL_KEY] = self.adapter.call(patches, batch, xs.device, xs.dtype)
            extra = {name: patch_rows(v, patches, batch, thw) for name, v in kwargs.items()}
            t = patch_timesteps(timestep, patches, thw[0])
            out = executor(xs, t, context.repeat_interleave(k, dim=0), None, None, opts, *args, **extra)
            self.progress.tick(1, self.step_ceiling - 1)
            return out

        return self._joint(float(sigmas[0]), transformer_options)(x, run, post=self._anchor(x, sigmas))


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
    schedule = FusionSchedule.build(plan, stitch, patch_batch)
    latent_format = model.get_model_object("latent_format")
    patched = model.clone()
    inputs = None
    if adapter is not None:
        dm = model.get_model_object("diffusion_model")
        inputs = AdapterInputs(adapter, dm, plan, context, lr_latent, latent_format, seed)
        # Compose with block replacements other nodes set on this model: theirs runs inside ours.
        replaced = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
        for i, block in enumerate(dm.blocks):
            inner = replaced.get(("double_block", i))
            patch = rt.block_patch(adapter.patcher.model, i, block, inner=inner)
            patched.set_model_patch_replace(patch, "dit", "double_block", i)
        # ComfyUI loads and offloads the adapter's weights together with the model.
        patched.set_additional_models(WRAPPER_KEY, [adapter.patcher])
    wrapper = PatchwiseDiffusion(schedule, context, latent_format, progress, inputs)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, wrapper)
    patched.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, WRAPPER_KEY, wrapper.prepare_sampling
    )
    return patched, wrapper
