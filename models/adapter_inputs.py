"""What a trained adapter reads per patch during one sampling run (PatchVSR section 3.2, supp. section 1),
made once and reused at every step where the inputs do not change.

- The patch branch's hints: its input is the LR patch latent noised once to t = 0.25 with fixed noise, and
  its time embedding is that fixed t, so its output is the same at every step; it runs once per patch per
  run (for the cond and uncond rows together) and is kept while the cache has room (`hint_budget`).
- The global branch's tokens: the whole-frame latent (noised once to t = 0.15) with the patch's location
  mask and the row's prompt; once per patch and prompt.
- The micro-conditions: scale, noise level and the patch's place in the frame.

Pure PyTorch: the host's latent normalisation (`process_in`) and the adapter module come in as arguments.
Dimension legend: b patches, B rows (cond and uncond copies of the patches, batch-major), C channels,
T/t latent frames, H/W full-size latent, gh/gw global latent, L tokens of a patch, G global tokens, D width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from . import adapter_runtime as rt
from .context import location_mask
from .flow import noise_to
from .joint import Patch, crop
from .plan import PatchPlan


def hint_bytes(adapter_cfg, dim: int, patches: Sequence[Patch], dtype_bytes: int = 2) -> int:
    """Bytes the patch branch's hints of `patches` take (K blocks x L tokens x D per patch), at the
    compute dtype's size (2: bf16 / fp16)."""
    k = len(adapter_cfg.patch_blocks)
    tokens = sum(w.length * -(-b.height // 2) * -(-b.width // 2) for w, b in patches)
    return k * tokens * dim * dtype_bytes


class AdapterInputs:
    """The adapter's inputs for the DiT calls of one sampling run."""

    def __init__(
        self,
        module,  # the loaded PatchVSRAdapter (ComfyUI moves it to the device in place)
        dm,  # the base DiT, whose embeddings and RoPE the branches use
        plan: PatchPlan,
        lr_latent: torch.Tensor,  # [1, C, T, H, W] raw VAE latent of the upscaled LR video
        global_latent: torch.Tensor,  # [1, C, T, gh, gw] raw VAE latent of the whole video at patch size
        global_noise: torch.Tensor,  # [1, C, T, gh, gw] the global context's seeded noise
        masks: torch.Tensor,  # [N, gh, gw] location mask of each of the plan's boxes
        global_noise_t: float,
        process_in: Callable[[torch.Tensor], torch.Tensor],  # raw VAE latent -> the model's normalised space
        seed: int,
        hint_budget: int = 0,  # bytes the hint cache may hold; 0: recompute the hints at every call
    ):
        self.module, self.dm, self.plan = module, dm, plan
        gen = torch.Generator().manual_seed((seed + 1) % 2**64)  # not the sampler's noise: independent
        lr = process_in(lr_latent.float())
        self.lr_noised = noise_to(lr, module.cfg.patch_noise_t, torch.randn(lr.shape, generator=gen))
        # Noised in the model's normalised space, as the trainer does (models/train.py).
        self.global_noised = noise_to(process_in(global_latent.float()), global_noise_t, global_noise.float())
        self.global_noise_t = global_noise_t
        self.masks = masks
        self.box_index = {box: i for i, box in enumerate(plan.boxes)}
        self.prompts: list[torch.Tensor] = []  # the distinct prompts seen ([Lt, text_dim] rows)
        self.tokens: dict = {}  # (patch, prompt index) -> [1, G, D]
        self.hint_budget = hint_budget
        self.hints: dict = {}  # patch -> K x [1, L, D], while the budget lasts
        self.hint_cache_bytes = 0
        self.branch_runs = 0  # patches the patch branch ran for (a test counts them)

    def _prompt(self, row: torch.Tensor) -> int:
        """Index of a prompt row among those seen: the cond and uncond rows keep theirs for the whole run."""
        for i, p in enumerate(self.prompts):
            if p.shape == row.shape and p.device == row.device and torch.equal(p, row):
                return i
        self.prompts.append(row.clone())  # a view would keep the whole call's context alive
        return len(self.prompts) - 1

    def _mask(self, box) -> torch.Tensor:
        """[gh, gw] location mask of `box`: the context's own for the plan's boxes; the shifted grids' boxes
        are not in the plan, so theirs are drawn here the same way."""
        if box in self.box_index:
            return self.masks[self.box_index[box]]
        return location_mask(box, self.plan.latent_shape[1:], tuple(self.masks.shape[-2:]))

    def _tokens(self, patch: Patch, prompt: int, device, dtype) -> torch.Tensor:
        if (patch, prompt) not in self.tokens:
            win, box = patch
            g = self.global_noised[:, :, win.t0 : win.t1].to(device, dtype)
            mask = rt.location_mask_volume(self._mask(box)[None], win.length).to(g)
            text = self.prompts[prompt][None]
            self.tokens[(patch, prompt)] = rt.global_tokens(self.dm, self.module, g, mask, text, self.global_noise_t)
        return self.tokens[(patch, prompt)]

    def patch_hints(self, patches: Sequence[Patch], device, dtype) -> tuple:
        """K x [b, L, D] patch-branch hints of `patches`: from the cache, the branch run for the rest."""
        missing = [p for p in patches if p not in self.hints]
        fresh = {}
        if missing:
            lr = torch.cat([crop(self.lr_noised, *p) for p in missing]).to(device, dtype)
            out = rt.patch_hints(self.dm, self.module, lr)  # K x [m, L, D]
            self.branch_runs += len(missing)
            for j, p in enumerate(missing):
                fresh[p] = tuple(h[j : j + 1] for h in out)
                size = sum(h.numel() * h.element_size() for h in fresh[p])
                if self.hint_cache_bytes + size <= self.hint_budget:
                    # A copy: a view would keep the whole call's batch alive.
                    self.hints[p] = tuple(h.clone() for h in fresh[p])
                    self.hint_cache_bytes += size
            if len(missing) == len(patches):
                return tuple(out)  # the call's own order
        rows = [self.hints[p] if p in self.hints else fresh[p] for p in patches]
        return tuple(torch.cat([r[k] for r in rows]).to(device, dtype) for k in range(len(rows[0])))

    def call(self, patches: Sequence[Patch], context: torch.Tensor, scale: float, device, dtype) -> rt.AdapterCall:
        """The adapter's inputs for one DiT call over `patches`; context: [B, Lt, text_dim] the call's prompt
        per latent row. The call's rows are batch-major, (B k), like the latent crops."""
        _, H, W = self.plan.latent_shape
        batch = context.shape[0]
        hints = self.patch_hints(patches, device, dtype)  # once for every row of these patches
        micro = []
        for _, box in patches:
            frac = (box.y0 / H, box.x0 / W, box.y1 / H, box.x1 / W)
            micro.append(rt.micro_vector(scale, self.module.cfg.patch_noise_t, frac, 1, device))
        micro = torch.cat(micro).repeat(batch, 1)
        prompts = [self._prompt(row) for row in context]
        tokens = torch.cat([self._tokens(patch, p, device, dtype) for p in prompts for patch in patches])
        return rt.AdapterCall(hints, tokens, self.module.micro(micro).to(dtype), repeat=batch)
