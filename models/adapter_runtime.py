"""Running a Wan DiT with the PatchVSR adapter, through the block-replacement hook the host's WanModel
offers (`transformer_options["patches_replace"]["dit"][("double_block", i)]`) and, inside the block, the
attention override every ComfyUI attention function honours (`transformer_options
["optimized_attention_override"]`), which gives G-CA the text cross-attention's query without touching the
block's code.

Pure PyTorch: the base model is used through its own attributes (time_embedding, time_projection,
text_embedding, rope_encode, blocks), so the same code serves the ComfyUI sampler and the trainer.
Dimension legend as in models/adapter.py.
"""

from __future__ import annotations

import sys
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
    """What the block patches add in one DiT call. The call's B rows are `repeat` copies (batch-major) of
    the hints' b rows: the patch branch's input is the same for the cond and uncond rows of a patch, so it
    runs once for them (B = repeat * b)."""

    hints: tuple  # K x [b, L, D] patch-branch features
    tokens: torch.Tensor | None  # [B, G, D] global-branch tokens (they read each row's prompt), or None
    micro: torch.Tensor  # [B, 1, 6, D] time-modulation delta
    repeat: int = 1


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


def patch_hints(dm, adapter: PatchVSRAdapter, lr: torch.Tensor) -> list:
    """lr: [b, C, T, H, W] LR patch latent already noised -> K x [b, L, D] patch-branch hints."""
    b, dtype, device = lr.shape[0], lr.dtype, lr.device
    t_patch = torch.full((b,), adapter.cfg.patch_noise_t, device=device)
    prompt = fixed_prompt(dm, b, device, dtype)
    return adapter.patch_branch(lr, time_modulation(dm, t_patch, dtype), rope_fn(dm, device, dtype), prompt)


def global_tokens(dm, adapter: PatchVSRAdapter, g: torch.Tensor, mask: torch.Tensor, context: torch.Tensor,
                  noise_t: float | None = None) -> torch.Tensor:  # fmt: skip
    """g: [b, C, T, gh, gw] global latent already noised to noise_t (default: the config's); mask:
    [b, 1, T, gh, gw]; context: [b, Lt, text_dim] the text prompt as given to the base -> [b, G, D]."""
    b, dtype, device = g.shape[0], g.dtype, g.device
    t = torch.full((b,), adapter.cfg.global_noise_t if noise_t is None else noise_t, device=device)
    prompt = dm.text_embedding(context.to(device, dtype))
    return adapter.global_branch(g, mask, time_modulation(dm, t, dtype), rope_fn(dm, device, dtype), prompt)


def compute_call(dm, adapter: PatchVSRAdapter, lr: torch.Tensor, micro: torch.Tensor,
                 global_latent: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 context: torch.Tensor | None = None) -> AdapterCall:  # fmt: skip
    """lr: [B, C, T, H, W] LR patch latent already noised; micro: [B, 6]; global_latent: [B, C, T, gh, gw]
    noised; mask: [B, 1, T, gh, gw]; context: [B, Lt, text_dim] the base's text prompt (the global branch
    reads it too)."""
    hints = patch_hints(dm, adapter, lr)
    tokens = None
    if global_latent is not None:
        assert context is not None, "the global branch reads the text prompt: pass the base's context"
        tokens = global_tokens(dm, adapter, global_latent, mask, context)
    return AdapterCall(tuple(hints), tokens, adapter.micro(micro).to(lr.dtype))


# Hosts that hand attention its inputs in single-owner containers (upstream ComfyUI's AttentionTensorContainer,
# comfy/ldm/modules/attention.py `wrap_attn`) mark the call with this keyword while it runs, so that the
# backend it reaches does not dispatch again; an override that dispatches again must drop it.
ATTENTION_REENTRY_KEY = "_inside_attn_wrapper"


def module_attention(layer) -> Callable | None:
    """The attention function `layer`'s forward calls (Wan's attention layers call their module's
    `optimized_attention`): what the host runs when no override is set."""
    return getattr(sys.modules.get(type(layer).__module__), "optimized_attention", None)


def gca_override(gca, tokens: torch.Tensor, text_len: int, inner: Callable | None,
                 preferred: tuple = (), attention: Callable | None = None) -> Callable:  # fmt: skip
    """An `optimized_attention_override` for one run of one block: the block's second attention is its text
    cross-attention (WanAttentionBlock: self-attention, then cross-attention); G-CA's output is added to
    that attention's output, before the cross-attention's output projection. `inner` is an override
    another extension set: it still computes every attention of the base.

    Newer hosts (upstream ComfyUI's `wrap_attn`) give attention its q, k, v in containers and the attention
    layer's preferred backend (its `comfy_attention`, e.g. int8 attention a checkpoint asks for). They
    call an override's `container_function` with the containers; an override without one gets the tensors
    taken out, and the preferred backend is skipped for every attention of the block. So this override has
    a container_function that runs each attention as the host would without it: `attention` (the host's
    function) dispatched again with `inner` as the override and `preferred[i]` (the block's i-th attention
    layer's backend, or None) as the preferred backend. Hosts without containers call the override itself."""
    seen = [0]

    def add_gca(q: torch.Tensor, k_len: int, out: torch.Tensor) -> torch.Tensor:
        assert k_len == text_len and q.ndim == 3, (
            f"the block's second attention has {k_len} keys and a query of shape {tuple(q.shape)}, not the "
            f"{text_len} text tokens: this host's Wan block is not self-attention then text cross-attention"
        )
        return out + gca(q, tokens).to(out.dtype)

    def override(func, q, k, v, *args, **kwargs):
        seen[0] += 1
        backend = preferred[seen[0] - 1] if seen[0] <= len(preferred) else None
        if inner is not None:
            out = inner(func, q, k, v, *args, **kwargs)
        elif getattr(backend, "function", None) is not None:
            out = backend.function(q, k, v, *args, **kwargs)  # the host's reentry keyword skips this override
        else:
            out = func(q, k, v, *args, **kwargs)
        return add_gca(q, k.shape[1], out) if seen[0] == 2 else out

    def with_containers(q, k, v, *args, **kwargs):
        seen[0] += 1
        backend = preferred[seen[0] - 1] if seen[0] <= len(preferred) else None
        # The backend takes the tensors out of their containers and may free them: keep G-CA's query.
        query, k_len = (q.peek(), k.peek().shape[1]) if seen[0] == 2 else (None, 0)
        opts = dict(kwargs.get("transformer_options", {}))
        opts.pop("optimized_attention_override", None)  # this override: the host must not come back here
        if inner is not None:
            opts["optimized_attention_override"] = inner
        again = {key: value for key, value in kwargs.items() if key != ATTENTION_REENTRY_KEY}
        again["transformer_options"] = opts
        if backend is not None:
            again["preferred_attention"] = backend
        assert attention is not None, "a host that passes attention containers has an attention function"
        out = attention(q, k, v, *args, **again)
        return add_gca(query, k_len, out) if query is not None else out

    override.container_function = with_containers
    return override


def block_patch(
    adapter: PatchVSRAdapter, index: int, block, checkpoint: bool = False, inner: Callable | None = None
) -> Callable:
    """The replacement for base block `index`: the original block with the micro-conditions in its
    modulation (and, with gca_in_cross_attention, G-CA inside its text cross-attention through the attention
    override), then the patch branch's hint (and, for an adapter with G-CA after the block, G-CA) added to
    its output. checkpoint=True recomputes the block in the backward pass (training memory). `inner(args, extra)` is a block replacement
    another extension set before this one: it runs in place of the original block, so both take effect."""
    interval = adapter.cfg.interval_of(index)
    gca = adapter.gca[index]
    inside = adapter.cfg.gca_in_cross_attention
    # The block's attention layers in call order, with the backend each prefers (hosts that have them).
    layers = (block.self_attn, block.cross_attn)
    preferred = tuple(getattr(layer, "comfy_attention", None) for layer in layers)
    attention = module_attention(block.cross_attn)

    def patch(args: dict, extra: dict) -> dict:
        call: AdapterCall | None = args["transformer_options"].get(CALL_KEY)
        if call is None:  # a call without adapter data (e.g. another sampler sharing the model): untouched
            return extra["original_block"](args) if inner is None else inner(args, extra)
        opts = args["transformer_options"]

        def run(a: dict, original: Callable) -> dict:
            if inside and call.tokens is not None:  # a fresh override per run: it counts the block's attentions
                override = gca_override(gca, call.tokens, a["txt"].shape[1], opts.get("optimized_attention_override"),
                                        preferred, attention)  # fmt: skip
                a = {**a, "transformer_options": {**opts, "optimized_attention_override": override}}
            return original(a) if inner is None else inner(a, extra)

        args = {**args, "vec": args["vec"] + call.micro}
        if checkpoint and torch.is_grad_enabled():
            # Not the host's original_block: it closes over the host's loop variable `block`, so when the
            # backward pass recomputes this block the loop has ended and it runs the LAST block (the output is
            # right, every gradient below the last block is wrong; measured on both hosts). Training calls
            # this block itself, as the host's block_wrap does (a T2V model: no image context).
            assert inner is None, "training does not chain another extension's block replacement"

            def this_block(a: dict) -> dict:
                return {"img": block(a["img"], context=a["txt"], e=a["vec"], freqs=a["pe"], context_img_len=None,
                                     transformer_options=a["transformer_options"])}  # fmt: skip

            x = torch.utils.checkpoint.checkpoint(
                lambda img, vec: run({**args, "img": img, "vec": vec}, this_block)["img"],
                args["img"],
                args["vec"],
                use_reentrant=False,
            )
        else:
            x = run(args, extra["original_block"])["img"]
        if not inside and call.tokens is not None:
            # G-CA shares the projection of the block's own text cross-attention query (paper section 3.2).
            ca = block.cross_attn
            x = x + gca(ca.norm_q(ca.q(block.norm3(x))), call.tokens.to(x))
        hint = call.hints[interval].to(x)
        if call.repeat == 1:
            return {"img": x + hint}
        rows = rearrange(x, "(r b) l d -> r b l d", r=call.repeat) + hint  # no copy of the hint per row
        return {"img": rearrange(rows, "r b l d -> (r b) l d")}

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
