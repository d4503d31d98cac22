"""Running a Wan DiT with the PatchVSR adapter, through the block-replacement hook the host's WanModel
offers (`transformer_options["patches_replace"]["dit"][("double_block", i)]`).

Pure PyTorch: the base model is used through its own attributes (time_embedding, time_projection,
text_embedding, rope_encode, blocks), so the same code serves the ComfyUI sampler and the trainer.
Dimension legend as in models/adapter.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from einops import rearrange

from .adapter import LORA_TARGETS, PatchVSRAdapter

CALL_KEY = "patchvsr_adapter"  # transformer_options key of the per-call AdapterCall
TIMESTEP_SCALE = 1000.0  # Wan's DiT takes t * 1000


@dataclass(frozen=True)
class AdapterCall:
    """What the block patches add in one DiT call (rows as in the call's batch)."""

    hints: tuple  # K x [B, L, D] patch-branch features
    tokens: torch.Tensor | None  # [B, G, D] global-branch tokens, or None without a global context
    micro: torch.Tensor  # [B, 1, 6, D] time-modulation delta


def time_modulation(dm, t: torch.Tensor, dtype) -> torch.Tensor:
    """t: [B] flow times -> [B, 1, 6, D] the base's block modulation input e0 at those times."""
    half = dm.freq_dim // 2
    pos = (t.float() * TIMESTEP_SCALE)[:, None]
    freqs = torch.pow(10000, -torch.arange(half, device=t.device, dtype=torch.float32) / half)
    emb = torch.cat([torch.cos(pos * freqs), torch.sin(pos * freqs)], dim=1)  # Wan's sinusoidal embedding
    e = dm.time_embedding(emb.to(dtype))[:, None]
    return dm.time_projection(e).unflatten(2, (6, -1))


def fixed_prompt(dm, batch: int, device, dtype) -> torch.Tensor:
    """[B, 1, D] the branches' fixed prompt: the base's embedding of a null text token."""
    return dm.text_embedding(torch.zeros(batch, 1, dm.text_embedding[0].in_features, device=device, dtype=dtype))


def rope_fn(dm, device, dtype) -> Callable:
    """rope(t, h, w) -> the base's RoPE freqs for a t x h x w token grid."""
    p = dm.patch_size
    return lambda t, h, w: dm.rope_encode(t * p[0], h * p[1], w * p[2], device=device, dtype=dtype)


def compute_call(dm, adapter: PatchVSRAdapter, lr: torch.Tensor, micro: torch.Tensor,
                 global_latent: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 tokens: torch.Tensor | None = None) -> AdapterCall:  # fmt: skip
    """lr: [B, C, T, H, W] LR patch latent already noised; micro: [B, 6]; global_latent: [B, C, T, gh, gw]
    noised; mask: [B, 1, T, gh, gw]. Pass `tokens` to reuse global tokens computed before."""
    b, dtype, device = lr.shape[0], lr.dtype, lr.device
    rope = rope_fn(dm, device, dtype)
    prompt = fixed_prompt(dm, b, device, dtype)
    t_patch = torch.full((b,), adapter.cfg.patch_noise_t, device=device)
    hints = adapter.patch_branch(lr, time_modulation(dm, t_patch, dtype), rope, prompt)
    if tokens is None and global_latent is not None:
        t_glob = torch.full((b,), adapter.cfg.global_noise_t, device=device)
        tokens = adapter.global_branch(global_latent, mask, time_modulation(dm, t_glob, dtype), rope, prompt)
    return AdapterCall(tuple(hints), tokens, adapter.micro(micro).to(dtype))


def block_patch(
    adapter: PatchVSRAdapter, index: int, block, checkpoint: bool = False, inner: Callable | None = None
) -> Callable:
    """The replacement for base block `index`: the original block, then the adapter's additions.
    checkpoint=True recomputes the block in the backward pass (training memory). `inner(args, extra)` is a
    block replacement another extension set before this one: it runs in place of the original block, so
    both take effect."""
    interval = adapter.cfg.interval_of(index)

    def patch(args: dict, extra: dict) -> dict:
        def run(a: dict) -> dict:
            return extra["original_block"](a) if inner is None else inner(a, extra)

        call: AdapterCall | None = args["transformer_options"].get(CALL_KEY)
        if call is None:  # a call without adapter data (e.g. another sampler sharing the model): untouched
            return run(args)
        args = {**args, "vec": args["vec"] + call.micro}
        if checkpoint and torch.is_grad_enabled():
            x = torch.utils.checkpoint.checkpoint(
                lambda img, vec: run({**args, "img": img, "vec": vec})["img"],
                args["img"],
                args["vec"],
                use_reentrant=False,
            )
        else:
            x = run(args)["img"]
        x = x + call.hints[interval].to(x)
        if call.tokens is not None:
            # G-CA shares the query of the block's own text cross-attention (paper section 3.2).
            ca = block.cross_attn
            q = ca.norm_q(ca.q(block.norm3(x)))
            x = x + adapter.gca[index](q, call.tokens.to(x))
        return {"img": x}

    return patch


def block_patches(adapter: PatchVSRAdapter, blocks, checkpoint: bool = False) -> dict:
    """patches_replace['dit'] entries for every base block."""
    return {("double_block", i): block_patch(adapter, i, blk, checkpoint) for i, blk in enumerate(blocks)}


def add_lora_hooks(adapter: PatchVSRAdapter, blocks) -> list:
    """Trainable LoRA on the base linears through forward hooks; returns the handles to remove."""
    handles = []
    for i, block in enumerate(blocks):
        for target in LORA_TARGETS:
            lora = adapter.lora_for(i, target)
            handles.append(
                block.get_submodule(target).register_forward_hook(lambda m, inp, out, lo=lora: out + lo.delta(inp[0]))
            )
    return handles


def forward(
    dm,
    adapter: PatchVSRAdapter,
    x: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    call: AdapterCall,
    checkpoint: bool = False,
) -> torch.Tensor:
    """x: [B, C, T, H, W] noisy latent at flow times t: [B] -> [B, C, T, H, W] velocity, through the
    base's public forward with the adapter's block patches (LoRA hooks must be added by the caller)."""
    opts = {"patches_replace": {"dit": block_patches(adapter, dm.blocks, checkpoint)}, CALL_KEY: call}
    return dm(x, t * TIMESTEP_SCALE, context, transformer_options=opts)


def micro_vector(
    scale: float, noise_t: float, box_frac: tuple[float, float, float, float], batch: int, device
) -> torch.Tensor:
    """[B, 6] micro-conditions: scale factor, noise level and the crop (y0, x0, y1, x1) as frame fractions."""
    return torch.tensor([[scale, noise_t, *box_frac]], device=device, dtype=torch.float32).expand(batch, -1)


def location_mask_volume(mask2d: torch.Tensor, frames: int) -> torch.Tensor:
    """mask2d: [B, gh, gw] -> [B, 1, T, gh, gw]."""
    return rearrange(mask2d, "b h w -> b 1 1 h w").expand(-1, -1, frames, -1, -1)
