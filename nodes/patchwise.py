"""Patch-wise denoising inside ComfyUI's samplers, through the ModelPatcher's public wrapper hooks.

A DIFFUSION_MODEL wrapper receives the full-size latent at every model evaluation, runs the DiT on the
plan's patches in batches, and returns the fused prediction (multi-patch joint modulation). Any ComfyUI
sampler and scheduler therefore steps the fused latent, and the DiT only ever sees patch-sized inputs.
"""

from __future__ import annotations

import logging
import math

import comfy.model_management
import comfy.patcher_extension
import torch

from ..models import adapter_runtime as rt
from ..models.adapter_inputs import AdapterInputs, hint_bytes
from ..models.blend import StitchConfig
from ..models.context import anchored_velocity, global_lowpass, lowpass_sigma
from ..models.joint import FusionSchedule, crop, patch_rows, patch_timesteps, step_index
from ..models.memory import HEADROOM, BatchSizer, reserve_shape, sampler_bytes
from .host import Progress, compute_dtype, is_oom, memory_estimate

WRAPPER_KEY = "patchvsr"
log = logging.getLogger(__name__)


# Conditioning a T2V Wan can receive that is not a per-row tensor PatchVSR could cut into patches. The
# sampler node refuses these before sampling (sampler.check_conditioning); the wrapper checks again, since
# another extension can add conditioning after the node has looked.
UNCUT_MODEL_INPUTS = {
    "reference_latent": "a reference latent (reference-image nodes)",
    "context_latents": "in-context reference latents",
    "control": "a ControlNet's hints",
}


class NonFiniteEvaluation(ValueError):
    """The first model evaluation of a run gave NaN or infinite values (the sampler names the suspect input)."""


class PatchwiseDiffusion:
    """The DIFFUSION_MODEL and PREPARE_SAMPLING wrappers of one sampling run."""

    def __init__(
        self,
        schedule: FusionSchedule,
        context,
        latent_format,
        progress: Progress,
        sizer: BatchSizer,
        adapter: AdapterInputs | None = None,
        conds: int = 2,
    ):
        self.schedule = schedule
        self.sizer = sizer
        self.conds = conds  # conditionings the sampler evaluates: 1 at cfg 1, else 2
        self.context = context
        self.latent_format = latent_format
        self.progress = progress
        self.adapter = adapter
        self.scale = schedule.plan.geometry.scale if schedule.plan.geometry is not None else 1.0
        self.sigmas: list[float] | None = None  # the run's noise levels, from set_sigmas
        self.done = [0, schedule.at(0, 1).num_patches]  # patches run by the end of each step, from set_sigmas
        self.step_ceiling = self.done[1]  # progress never runs ahead of the sampler's step count
        self.base = progress.done  # patches the bar counted before this run (earlier chunks of a long video)
        self._global_lp = None
        self.evaluations = 0  # model evaluations finished; the first one is checked for non-finite values

    def set_sigmas(self, sigmas: torch.Tensor) -> int:
        """The run's noise levels (steps + 1), which tell each model evaluation its step; returns the
        run's patch evaluations at one model evaluation per step (the run's share of the progress bar;
        counted in patches, since the patches per DiT call adapt to free memory)."""
        self.sigmas = [float(s) for s in sigmas]
        steps = len(self.sigmas) - 1
        self.done = [0]
        for n in self.schedule.patches_per_step(steps):
            self.done.append(self.done[-1] + n)
        self.step_ceiling = self.done[min(1, steps)]
        return self.done[-1]

    def _joint(self, sigma: float, transformer_options):
        """The joint modulation of the evaluation at `sigma`: its step's, by where sigma sits in the run."""
        levels = self.sigmas if self.sigmas is not None else transformer_options.get("sample_sigmas")
        if levels is None:  # no run to place the evaluation in: the last step's layout, seamless on its own
            return self.schedule.at(0, 1)
        levels = [float(s) for s in levels]
        return self.schedule.at(step_index(sigma, levels), len(levels) - 1)

    # PREPARE_SAMPLING: ComfyUI reserves memory (and decides how much of the model to load) from its estimate
    # for the latent it sees; the DiT sees patch batches, and the sampler keeps full-size latents besides.
    # Newer hosts pass more arguments (0.33: force_full_load, force_offload): pass on whatever comes.
    def prepare_sampling(self, executor, model, noise_shape, conds, *args, **kwargs):
        shape = self.reserved_shape(model, noise_shape)
        # Once per run: what ComfyUI's load decision (full load, partial load, offloading) rests on, so an
        # artist or a benchmark can set it against what the run then takes.
        log.info(
            "PatchVSR: memory estimate asked for input %s (%.0f MiB by the host's formula) instead of the full "
            "latent %s",
            shape,
            model.model.memory_required(shape) / 2**20,
            list(noise_shape),
        )
        return executor(model, shape, conds, *args, **kwargs)

    def reserved_shape(self, model, noise_shape) -> list[int]:
        """The input shape ComfyUI's estimate is asked about: the largest patch of any step, as many as one
        DiT call takes (one when the batch adapts: the weights come first, the batch takes what is left),
        grown by the full-size latents the sampler keeps (models/memory.py counts them) and the adapter's hint
        cache."""
        batches = [b for jm in self.schedule.layouts for b in jm.batches]
        t, h, w = max((p[0].length, p[1].height, p[1].width) for b in batches for p in b)
        k = self.sizer.limit or 1
        conds = 1 if self.conds == 1 and not model.model_options.get("disable_cfg1_optimization", False) else 2
        anchored = self.context is not None and self.context.config.strength != 0.0
        full = sampler_bytes(noise_shape[1:], conds, anchored) * noise_shape[0]
        full += self.adapter.hint_budget if self.adapter is not None else 0  # the patch branch's cached hints
        patch_shape = [noise_shape[0] * k, noise_shape[1], t, h, w]
        return reserve_shape(memory_estimate(model), patch_shape, full)

    def on_step(self, step: int, preview=None) -> None:
        last = len(self.done) - 1
        self.step_ceiling = self.done[min(step + 2, last)]
        self.progress.set(self.base + self.done[min(step + 1, last)], preview=preview)

    def _anchor(self, x: torch.Tensor, sigmas: torch.Tensor):
        """The training-free global context: a per-patch post-processing of the prediction, or None. With a
        trained adapter it runs only when the context asks for it (ContextConfig.with_adapter)."""
        ctx = self.context
        if ctx is None or ctx.config.strength == 0.0:
            return None
        if self.adapter is not None and not ctx.config.with_adapter:
            return None
        plan = self.schedule.plan
        sigma_px = lowpass_sigma(plan, ctx.config, tuple(ctx.latent.shape[-2:]))
        if self._global_lp is None or self._global_lp.device != x.device:
            # In the model's normalised space, the space of x0 below (the context holds the raw VAE latent).
            g = self.latent_format.process_in(ctx.latent.to(x.device, torch.float32))
            self._global_lp = global_lowpass(g, plan, sigma_px)

        def post(v, x_patch, patch):
            return anchored_velocity(v, x_patch, sigmas, crop(self._global_lp, *patch), ctx.config.strength, sigma_px)

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
        self._check_latent(x, transformer_options)
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
                opts[rt.CALL_KEY] = self.adapter.call(patches, context, self.scale, xs.device, xs.dtype)
            extra = {name: patch_rows(v, patches, batch, thw) for name, v in kwargs.items()}
            t = patch_timesteps(timestep, patches, thw[0])
            out = executor(xs, t, context.repeat_interleave(k, dim=0), None, None, opts, *args, **extra)
            if self.evaluations == 0:
                self._check_finite(out, f"patch batch of {k} patches")
            self.progress.tick(k, self.base + self.step_ceiling - 1)
            return out

        jm = self._joint(float(sigmas[0]), transformer_options)
        out = jm(x, run, post=self._anchor(x, sigmas), sizer=self.sizer)
        if self.evaluations == 0:
            self._check_finite(out, "fused prediction")
        self.evaluations += 1
        return out

    def _check_latent(self, x: torch.Tensor, transformer_options) -> None:
        """The model call must hand over the whole latent of the plan. The sampler refuses the modifications
        it knows that cut or shift it (nodes/compose.py); another node's wrapper may still do so."""
        T, H, W = self.schedule.plan.latent_shape
        if x.ndim == 5 and tuple(x.shape[2:]) == (T, H, W):
            return
        wrappers = transformer_options.get("wrappers", {})
        others = [
            f"{kind} '{key}'"
            for kind, by_key in wrappers.items()
            if kind != comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING  # sets up memory, never sees the latent
            for key, fns in by_key.items()
            if fns and key != WRAPPER_KEY
        ]
        likely = (
            f"likely one of the wrappers other nodes put on this model: {', '.join(others)}"
            if others
            else "no other node put a wrapper on this model: look for one that sets a context handler or replaces "
            "the model's forward"
        )
        raise ValueError(
            f"model: the sampler's model call handed PatchVSR a latent of shape {list(x.shape)}, but the plan is "
            f"{T}x{H}x{W} (frames x height x width): a node in front of the sampler reshapes the latent before "
            f"the model sees it ({likely}). Remove that node from the model chain in front of PatchVSR Sampler: "
            "PatchVSR cuts the latent into patches and temporal windows itself (set them on PatchVSR Patch "
            "Partitioner)."
        )

    @staticmethod
    def _check_finite(out: torch.Tensor, what: str) -> None:
        # Only in the first evaluation: a model that blows up does so at once (far out of scale weights),
        # and a check syncs the GPU, which one evaluation's patch batches can afford and every call cannot.
        if not torch.isfinite(out).all():
            bad = int((~torch.isfinite(out)).sum())
            raise NonFiniteEvaluation(f"the first model evaluation gave {bad} NaN or infinite values (in a {what})")


def batch_sizer(model, patch_batch: int) -> BatchSizer:
    """patch_batch patches per DiT call, or with 0 as many as the device's free memory holds by ComfyUI's own
    estimate for the model (with the headroom ComfyUI keeps when it batches cond and uncond); either way
    halved when a call runs out of memory."""
    channels, device, estimate = model.model.latent_format.latent_channels, model.load_device, memory_estimate(model)

    def fits(rows: int, thw: tuple[int, int, int]) -> int:
        one = estimate([rows, channels, *thw])
        return math.floor(comfy.model_management.get_free_memory(device) / (one * HEADROOM)) if one > 0 else 1 << 30

    def on_oom(size: int) -> None:
        log.warning("PatchVSR: out of memory in a patch batch; retrying it with %d patches per DiT call", size)
        comfy.model_management.soft_empty_cache()  # the failed call's blocks, so the retry can use them

    return BatchSizer(patch_batch or None, is_oom, fits if patch_batch == 0 else None, on_oom)


# The patch branch's hints are cached for the run while they take at most this share of the device's memory
# (counted in ComfyUI's reservation); beyond it the branch runs again at every step (a 4K clip of 81 frames
# on Wan 2.1 1.3B would need about 48 GB: models/adapter_inputs.py hint_bytes).
HINT_CACHE_SHARE = 0.25


def hint_budget(model, adapter, dm, schedule: FusionSchedule) -> int:
    """Bytes of patch-branch hints to keep for the run: every distinct patch's, or as many as fit the share."""
    patches = {p for jm in schedule.layouts for batch in jm.batches for p in batch}
    need = hint_bytes(adapter.config, dm.dim, patches, compute_dtype(model).itemsize)
    share = int(comfy.model_management.get_total_memory(model.load_device) * HINT_CACHE_SHARE)
    if need > share:
        log.info("PatchVSR: the adapter's patch-branch hints need %.1f GiB; caching %.1f GiB of them, the rest "
                 "run again at every step", need / 2**30, share / 2**30)  # fmt: skip
    return min(need, share)


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
    cfg: float | None = None,
):
    """A clone of `model` that denoises patch-wise (with the adapter's block patches when one is given);
    the input model is left untouched. patch_batch 0 adapts the patches per DiT call to free memory."""
    schedule = FusionSchedule.build(plan, stitch, patch_batch or None)
    latent_format = model.get_model_object("latent_format")
    patched = model.clone()
    inputs = None
    if adapter is not None:
        dm = model.get_model_object("diffusion_model")
        inputs = AdapterInputs(
            adapter.patcher.model, dm, plan, lr_latent, context.latent, context.noise, context.masks,
            context.config.noise_t, latent_format.process_in, seed, hint_budget(model, adapter, dm, schedule),
        )  # fmt: skip
        # Compose with block replacements other nodes set on this model: theirs runs inside ours.
        replaced = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
        for i, block in enumerate(dm.blocks):
            inner = replaced.get(("double_block", i))
            patch = rt.block_patch(adapter.patcher.model, i, block, inner=inner)
            patched.set_model_patch_replace(patch, "dit", "double_block", i)
        # ComfyUI loads and offloads the adapter's weights together with the model.
        patched.set_additional_models(WRAPPER_KEY, [adapter.patcher])
    conds = 1 if cfg is not None and math.isclose(cfg, 1.0) else 2  # ComfyUI skips the uncond at cfg 1
    sizer = batch_sizer(model, patch_batch)
    wrapper = PatchwiseDiffusion(schedule, context, latent_format, progress, sizer, inputs, conds)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, wrapper)
    patched.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, WRAPPER_KEY, wrapper.prepare_sampling
    )
    return patched, wrapper
