"""The PatchVSR adapter (paper section 3.2, supplement section 1) on top of a Wan DiT's own blocks.

Dimension legend: B batch, C latent channels, T/H/W latent frames/rows/columns, L tokens (T * H/2 * W/2),
D model width, G global tokens, K patch-branch blocks.

- Patch condition branch: K blocks copied from the base at equal layer intervals; input the LR patch
  latent noised to t = 0.25 with a fixed (null) prompt (paper: "a fixed prompt for the patch condition
  branch"); branch block k's output enters the base blocks of its interval through a zero-initialised
  projection added to their output (as in Wan's VACE).
- Global context branch: base blocks copied at equal intervals, split into levels; each level ends with a
  2x2 token merge (1/4 of the tokens); input the whole video at patch size noised to t = 0.15, concatenated
  on channels with the binary location mask (its input weights start at zero), with the text prompt (paper:
  "the base model and global context branch using text prompts"). Its tokens enter every base block
  through G-CA inside the block's text cross-attention (supplement: "GCA modules in SCA blocks"): new keys
  and values from the tokens, the text cross-attention's own query, the two attention outputs summed before
  the text cross-attention's output projection (a decoupled cross-attention); G-CA's value projection starts
  at zero.
- LoRA on the base's self-attention, text cross-attention and FFN linears (up matrices start at zero),
  stored under ComfyUI's LoRA key names so ComfyUI's own loader can apply that part.
- Micro-conditions (scale factor, noise level, crop location) embedded and added to the time modulation's
  two shift chunks through a zero-initialised, tanh-bounded layer (see MicroConditions for why).
Every output starts at zero, so an untrained adapter leaves the base model's output bit for bit unchanged.
The host's block classes are used as given: the branches hold copies of the base's blocks (plain_copy) whose
layers are stock PyTorch layers in one compute dtype, whatever format the base was loaded in.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from torch import nn

# 2: the global branch reads the text prompt, its latent is noise-augmented in the model's normalised space,
# G-CA may sit inside the text cross-attention (gca_in_cross_attention). A version-1 file was trained for
# the old inputs and cannot be converted.
FORMAT_VERSION = 2
# Base linears that carry LoRA, relative to a block (WanAttentionBlock's attribute names).
LORA_TARGETS = (
    "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
    "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o",
    "ffn.0", "ffn.2",
)  # fmt: skip
MICRO_MAX_FREQ = 64.0  # highest micro-condition feature frequency, radians per unit (see sinusoid)
MICRO_BOUND = 1.0  # largest shift offset from micro-conditions (the blocks' inputs are layer-normalised)
MICRO_FIELDS = 6  # scale factor, noise level, crop y0, x0, y1, x1 (fractions of the frame)


WeightOf = Callable[[nn.Module, str], torch.Tensor]  # (layer, parameter name) -> its values as real numbers
# The host's per-layer attention choice (upstream ComfyUI's ComfyAttention, comfy/ldm/modules/attention.py):
# the backend a checkpoint asks for (e.g. int8 attention), read from and written to the state dict as a
# `config` tensor. Copies drop it: they run in their own dtype on the host's default attention, and their
# state dict, so the adapter file, holds weights only (an older host refuses the extra key, and the file's
# float32 copy of it is no config a newer host can parse).
HOST_ATTENTION_CONFIG = "ComfyAttention"


def stored_tensor(layer: nn.Module, name: str) -> torch.Tensor:
    """A layer's parameter as stored. Enough for plain fp8/fp16/bf16 weights (a cast recovers them); a host
    that stores scaled or quantized weights passes its own reader to plain_copy."""
    return getattr(layer, name)


# Stock PyTorch layers a Wan block and its patch embedding are made of, each rebuilt from its
# hyperparameters on the meta device (no init work: plain_copy assigns every tensor).
STOCK_LAYERS: dict[type, Callable[[nn.Module], nn.Module]] = {
    nn.Conv3d: lambda m: nn.Conv3d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                                   m.groups, m.bias is not None, m.padding_mode, device="meta"),
    nn.LayerNorm: lambda m: nn.LayerNorm(m.normalized_shape, m.eps, m.elementwise_affine, bias=m.bias is not None,
                                         device="meta"),
    nn.RMSNorm: lambda m: nn.RMSNorm(m.normalized_shape, m.eps, m.elementwise_affine, device="meta"),
    nn.Linear: lambda m: nn.Linear(m.in_features, m.out_features, m.bias is not None, device="meta"),
}  # fmt: skip


def _stock_kind(layer: nn.Module) -> type | None:
    """Which stock layer `layer` is. Hosts subclass these to cast or dequantize weights on the fly; a
    quantized linear may subclass only nn.Module (ComfyUI 0.33), and is known by its in/out features."""
    kind = next((k for k in STOCK_LAYERS if isinstance(layer, k)), None)
    if kind is None and hasattr(layer, "in_features") and hasattr(layer, "out_features"):
        return nn.Linear
    return kind


def plain_copy(module: nn.Module, dtype: torch.dtype, weight_of: WeightOf = stored_tensor) -> nn.Module:
    """A copy of `module` (base blocks, the patch embedding, a whole DiT) whose layers are stock PyTorch
    layers holding plain `dtype` tensors read through `weight_of`.

    A deep copy would keep the host's storage and layer classes: fp8 weights (into which the adapter file's
    trained branch weights would then be rounded), scaled-fp8 scales applied in the host's forward,
    quantized tensor subclasses, and ops that cast on the fly; the copy's state-dict keys would also depend
    on the base's format. Here the structure (the block classes and their forward) is deep-copied, and every
    layer or parameter that holds weights is replaced on the way through deepcopy's memo."""
    memo: dict[int, object] = {}
    for sub in module.modules():
        kind = _stock_kind(sub)
        if kind is not None:
            new = STOCK_LAYERS[kind](sub)
            for name, _ in list(new.named_parameters(recurse=False)):
                setattr(new, name, nn.Parameter(weight_of(sub, name).detach().to(dtype=dtype, copy=True)))
            memo[id(sub)] = new
        else:  # a parameter a block owns itself (Wan's modulation)
            for name, p in sub.named_parameters(recurse=False):
                memo[id(p)] = nn.Parameter(weight_of(sub, name).detach().to(dtype=dtype, copy=True))
    out = copy.deepcopy(module, memo)
    for sub in out.modules():
        if type(sub).__name__ == HOST_ATTENTION_CONFIG:
            sub.config = sub.function = None
    return out


def equal_intervals(n_layers: int, k: int) -> tuple[int, ...]:
    """k block indices spread at equal intervals over n_layers, starting at 0 (Ctrl-Adapter's rule)."""
    assert 1 <= k <= n_layers, f"cannot pick {k} blocks from {n_layers}"
    return tuple(int(i * n_layers / k) for i in range(k))


@dataclass(frozen=True)
class AdapterConfig:
    """Stored as JSON in the safetensors metadata; a loader compares it with the connected base model."""

    base_dim: int  # width of the base DiT (1536 for Wan 2.1 1.3B, 5120 for 14B)
    base_layers: int  # blocks in the base DiT (30 / 40)
    base_heads: int  # attention heads of the base DiT
    in_channels: int  # latent channels (16 Wan 2.1, 48 Wan 2.2 TI2V-5B)
    patch_blocks: tuple[int, ...]  # base blocks copied into the patch branch, at equal intervals
    global_blocks: tuple[int, ...]  # base blocks copied into the global branch, split evenly over its levels
    global_levels: int = 2  # token merges in the global branch, each to 1/4 of the tokens
    lora_rank: int = 16
    lora_alpha: float = 16.0
    patch_noise_t: float = 0.25  # the patch branch's input noise level at inference (supplement: 250/1000)
    global_noise_t: float = 0.15  # the global branch's input noise level (supplement: 150/1000)
    micro_freq: int = 64  # sinusoidal features per micro-condition
    # G-CA inside the text cross-attention (the supplement's placement; +11% per adapter step against +15%
    # after the block, README "Cost of an adapter step"); False: after the block with its own query and
    # output projection over the patch's tokens (GlobalCrossAttention).
    gca_in_cross_attention: bool = True
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AdapterConfig:
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"adapter config has unknown fields {unknown}")
        for key in ("patch_blocks", "global_blocks"):
            raw[key] = tuple(raw[key])
        return cls(**raw)

    @classmethod
    def for_base(cls, dim: int, layers: int, heads: int, channels: int, patch_k: int | None = None,
                 global_k: int | None = None, **kw) -> AdapterConfig:  # fmt: skip
        """Defaults: a patch branch of ~1/6 of the base's depth, a global branch of ~1/10 (at least one
        block per level)."""
        levels = kw.pop("global_levels", 2)
        patch_k = patch_k or max(1, layers // 6)
        global_k = global_k or max(levels, layers // 10)
        return cls(
            dim,
            layers,
            heads,
            channels,
            equal_intervals(layers, patch_k),
            equal_intervals(layers, global_k),
            levels,
            **kw,
        )

    def interval_of(self, block: int) -> int:
        """Index of the patch-branch block whose output feeds base block `block` (its interval)."""
        return max(k for k, start in enumerate(self.patch_blocks) if start <= block)


def pad_to_stride(x: torch.Tensor, stride) -> torch.Tensor:
    """x: [B, C, T, H, W] padded (circularly, as the host pads the base's input) to multiples of the
    patch embedding's stride, so branch tokens line up with the base's tokens on odd-sized patches."""
    pad = [(-n) % k for n, k in zip(x.shape[2:], stride)]
    return F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="circular") if any(pad) else x


def zero_linear(d_in: int, d_out: int) -> nn.Linear:
    """A linear layer whose output starts at exactly zero: injected branches begin as identities."""
    layer = nn.Linear(d_in, d_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def sinusoid(x: torch.Tensor, n: int) -> torch.Tensor:
    """x: [B, F] scalars -> [B, F * n] sinusoidal features.

    Frequencies run from 1 to MICRO_MAX_FREQ radians per unit: micro-conditions live in [0, 4] and vary
    per training crop, and features that turn over many times across that range (as Wan's x1000 timestep
    features would) are noise to the zero-initialised layer; fitting them destabilised training (measured:
    the validation loss jumped back to the untrained level after ~1800 steps at lr 3e-4)."""
    half = n // 2
    freqs = torch.logspace(0.0, math.log10(MICRO_MAX_FREQ), half, device=x.device, dtype=torch.float32)
    angles = x.float()[..., None] * freqs
    return rearrange(torch.cat([angles.cos(), angles.sin()], dim=-1), "b f n -> b (f n)")


def run_block(block: nn.Module, x: torch.Tensor, checkpoint: bool, **kwargs) -> torch.Tensor:
    """A copied Wan block on tokens x: [B, L, D]; with `checkpoint` (training), its activations are not kept
    but recomputed in the backward pass: a block's activations are about 20 x L x D values, so the branches'
    blocks cost as much memory per token as the base's, which the trainer checkpoints already."""
    if checkpoint and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(lambda y: block(y, **kwargs), x, use_reentrant=False)
    return block(x, **kwargs)


class PatchBranch(nn.Module):
    def __init__(self, cfg: AdapterConfig, base_blocks, patch_embedding: nn.Module, dtype, weight_of: WeightOf):
        super().__init__()
        self.grad_checkpointing = False  # set by the trainer (PatchVSRAdapter.set_grad_checkpointing)
        # The embedding runs in float32 as the base's does (Wan keeps its patch embedding in float32).
        self.embed = plain_copy(patch_embedding, torch.float32, weight_of)
        self.blocks = nn.ModuleList(plain_copy(base_blocks[i], dtype, weight_of) for i in cfg.patch_blocks)
        self.proj = nn.ModuleList(zero_linear(cfg.base_dim, cfg.base_dim) for _ in cfg.patch_blocks)

    def forward(self, lr: torch.Tensor, e0: torch.Tensor, rope: Callable, context: torch.Tensor) -> list:
        """lr: [B, C, T, H, W] noised LR patch latent; e0: [B, 1, 6, D]; rope(t, h, w) gives the base's
        RoPE freqs; context: [B, Lt, D] embedded fixed prompt -> K hints [B, L, D], one per branch block."""
        x = self.embed(pad_to_stride(lr, self.embed.stride).float()).to(lr.dtype)
        freqs = rope(*x.shape[2:])
        x = rearrange(x, "b d t h w -> b (t h w) d")
        hints = []
        for block, proj in zip(self.blocks, self.proj):
            x = run_block(block, x, self.grad_checkpointing, e=e0, freqs=freqs, context=context, context_img_len=None)
            # In the projection's dtype: the model's compute dtype at inference (cast_for_inference), the
            # float32 master weights in training (under autocast on a GPU).
            hints.append(proj(x.to(proj.weight.dtype)).to(x.dtype))
        return hints


class GlobalBranch(nn.Module):
    def __init__(self, cfg: AdapterConfig, base_blocks, patch_embedding: nn.Module, dtype, weight_of: WeightOf):
        super().__init__()
        self.grad_checkpointing = False  # set by the trainer (PatchVSRAdapter.set_grad_checkpointing)
        c, d = cfg.in_channels, cfg.base_dim
        base_w = weight_of(patch_embedding, "weight").detach()
        # One more input channel for the location mask; its weights start at zero (paper: concatenated).
        self.embed = nn.Conv3d(c + 1, d, kernel_size=tuple(base_w.shape[2:]), stride=tuple(base_w.shape[2:]))
        with torch.no_grad():
            self.embed.weight.zero_()
            self.embed.weight[:, :c] = base_w.float()
            self.embed.bias.copy_(weight_of(patch_embedding, "bias").detach().float())
        chunks = [sorted(cfg.global_blocks)[round(i * len(cfg.global_blocks) / cfg.global_levels) : round((i + 1) * len(cfg.global_blocks) / cfg.global_levels)] for i in range(cfg.global_levels)]  # fmt: skip
        assert all(chunks), f"{len(cfg.global_blocks)} global blocks cannot fill {cfg.global_levels} levels"
        self.levels = nn.ModuleList(
            nn.ModuleList(plain_copy(base_blocks[i], dtype, weight_of) for i in chunk) for chunk in chunks
        )
        # 2x2 merge to one token, initialised as the mean of the four (patchify of the level's output).
        self.merge = nn.ModuleList(nn.Linear(4 * d, d) for _ in chunks)
        with torch.no_grad():
            for m in self.merge:
                m.weight.copy_(torch.cat([torch.eye(d) / 4] * 4, dim=1))
                m.bias.zero_()

    def forward(self, g: torch.Tensor, mask: torch.Tensor, e0: torch.Tensor, rope: Callable, context: torch.Tensor):
        """g: [B, C, T, gh, gw] noised global latent; mask: [B, 1, T, gh, gw] binary location mask;
        rope(t, h, w) gives the base's RoPE freqs for a t*h*w token grid -> [B, G, D] context tokens."""
        x = self.embed(pad_to_stride(torch.cat([g, mask], dim=1), self.embed.stride).float()).to(g.dtype)  # b d t h w
        for blocks, merge in zip(self.levels, self.merge):
            t, h, w = x.shape[2:]
            tokens = rearrange(x, "b d t h w -> b (t h w) d")
            for block in blocks:
                tokens = run_block(
                    block,
                    tokens,
                    self.grad_checkpointing,
                    e=e0,
                    freqs=rope(t, h, w),
                    context=context,
                    context_img_len=None,
                )
            x = rearrange(tokens, "b (t h w) d -> b d t h w", t=t, h=h, w=w)
            x = F.pad(x, (0, w % 2, 0, h % 2, 0, 0), mode="replicate") if (h % 2 or w % 2) else x
            x = rearrange(x, "b d t (h ph) (w pw) -> b d t h w (ph pw)", ph=2, pw=2)
            x = rearrange(x, "b d t h w k -> b t h w (k d)")
            x = rearrange(merge(x.to(merge.weight.dtype)).to(g.dtype), "b t h w d -> b d t h w")
        return rearrange(x, "b d t h w -> b (t h w) d")


class GlobalCrossAttention(nn.Module):
    """G-CA: new keys and values from the global tokens against the block's text cross-attention query.

    Two placements (AdapterConfig.gca_in_cross_attention):
    - inside the text cross-attention (default; the supplement's "GCA modules in SCA blocks"): the query is
      that attention's own, and G-CA's attention output is summed with the text attention's before the
      shared output projection (a decoupled cross-attention, as in IP-Adapter); its value projection starts
      at zero;
    - after the block: the query is the text cross-attention's projection of the block's output, and G-CA's
      own zero-initialised output projection adds its result to the block's output (one query and one
      output projection more over the patch's tokens per block)."""

    def __init__(self, dim: int, heads: int, inside: bool = True):
        super().__init__()
        self.heads = heads
        self.k = nn.Linear(dim, dim)
        self.norm_k = nn.RMSNorm(dim, eps=1e-6)
        self.v = zero_linear(dim, dim) if inside else nn.Linear(dim, dim)
        self.o = None if inside else zero_linear(dim, dim)

    def forward(self, q: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """q: [B, L, D] (the text cross-attention's, normalised); tokens: [B, G, D] -> [B, L, D] in q's dtype
        (the model's compute dtype): the attention output (inside) or the output (after the block)."""
        w = self.k.weight.dtype
        k = self.norm_k(self.k(tokens.to(w))).to(q.dtype)
        v = self.v(tokens.to(w)).to(q.dtype)
        q, k, v = (rearrange(a, "b l (h d) -> b h l d", h=self.heads) for a in (q, k, v))
        out = rearrange(F.scaled_dot_product_attention(q, k, v), "b h l d -> b l (h d)")
        return out if self.o is None else self.o(out.to(w)).to(q.dtype)


class MicroConditions(nn.Module):
    """Scale factor, noise level and crop location -> a bounded offset of the blocks' two shift
    modulations (self-attention and FFN input).

    Only the shifts, and through tanh: an offset of the multiplicative scale and gate chunks let AdamW's
    random walk on these mostly uninformative features blow the residual stream up (measured twice: the
    validation loss jumped to the untrained level after 1500-1800 steps, cured by zeroing this layer)."""

    SHIFT_CHUNKS = (0, 3)  # Wan's modulation chunks: shift, scale, gate (attention), shift, scale, gate (FFN)

    def __init__(self, cfg: AdapterConfig):
        super().__init__()
        self.freq = cfg.micro_freq
        self.mlp = nn.Sequential(nn.Linear(MICRO_FIELDS * cfg.micro_freq, cfg.base_dim), nn.SiLU())
        self.out = zero_linear(cfg.base_dim, len(self.SHIFT_CHUNKS) * cfg.base_dim)

    def forward(self, micro: torch.Tensor) -> torch.Tensor:
        """micro: [B, 6] (scale, noise level, y0, x0, y1, x1) -> [B, 1, 6, D] added to the time modulation."""
        h = self.mlp(sinusoid(micro, self.freq).to(self.out.weight.dtype))
        shifts = MICRO_BOUND * torch.tanh(rearrange(self.out(h), "b (k d) -> b k d", k=len(self.SHIFT_CHUNKS)))
        delta = shifts.new_zeros(shifts.shape[0], 1, 6, shifts.shape[-1])
        delta[:, 0, list(self.SHIFT_CHUNKS)] = shifts
        return delta


class LoRA(nn.Module):
    """Low-rank update W + (alpha / rank) up @ down of one base linear; `up` starts at zero."""

    def __init__(self, d_in: int, d_out: int, rank: int, alpha: float):
        super().__init__()
        self.down = nn.Parameter(torch.randn(rank, d_in) / math.sqrt(d_in))
        self.up = nn.Parameter(torch.zeros(d_out, rank))
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.rank = rank

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.down.to(x)), self.up.to(x)) * (self.alpha.item() / self.rank)


def lora_key(block: int, target: str) -> str:
    """ComfyUI's generic LoRA key prefix for a base linear: diffusion_model.blocks.{i}.{target}."""
    return f"diffusion_model.blocks.{block}.{target}"


def _module_name(block: int, target: str) -> str:
    return f"{block}__{target.replace('.', '_')}"


class PatchVSRAdapter(nn.Module):
    """dtype: the branches' copied blocks hold and run in it (the base's compute dtype, never fp8); the
    adapter's own layers are float32 (master weights for training) until cast_for_inference. weight_of reads
    the base's weights (see plain_copy)."""

    def __init__(self, cfg: AdapterConfig, base_blocks, patch_embedding: nn.Module,
                 dtype: torch.dtype = torch.float32, weight_of: WeightOf = stored_tensor):  # fmt: skip
        super().__init__()
        self.cfg = cfg
        self.patch_branch = PatchBranch(cfg, base_blocks, patch_embedding, dtype, weight_of)
        self.global_branch = GlobalBranch(cfg, base_blocks, patch_embedding, dtype, weight_of)
        self.gca = nn.ModuleList(
            GlobalCrossAttention(cfg.base_dim, cfg.base_heads, cfg.gca_in_cross_attention)
            for _ in range(cfg.base_layers)
        )
        self.micro = MicroConditions(cfg)
        self.lora = nn.ModuleDict()
        for i, block in enumerate(base_blocks):
            for target in LORA_TARGETS:
                lin = block.get_submodule(target)
                self.lora[_module_name(i, target)] = LoRA(
                    lin.in_features, lin.out_features, cfg.lora_rank, cfg.lora_alpha
                )

    def cast_for_inference(self, dtype: torch.dtype) -> PatchVSRAdapter:
        """The adapter's own layers (projections, merges, G-CA, micro-conditions) in the model's compute
        dtype, as the copied blocks already are: float32 there would double their memory and time (at 14B
        these layers hold 2.5 B parameters: 10.1 GB in float32, 5.0 GB in bf16). The two patch embeddings stay float32, as Wan keeps its own;
        the LoRA part is merged by ComfyUI from the file's tensors and is not used from here."""
        for part in (self.patch_branch.proj, self.global_branch.merge, self.gca, self.micro):
            part.to(dtype)
        return self

    def set_grad_checkpointing(self, on: bool) -> PatchVSRAdapter:
        """Training: recompute the branches' copied blocks in the backward pass instead of keeping their
        activations (the base's blocks are checkpointed by the block patches)."""
        self.patch_branch.grad_checkpointing = self.global_branch.grad_checkpointing = on
        return self

    def lora_for(self, block: int, target: str) -> LoRA:
        return self.lora[_module_name(block, target)]

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA part under ComfyUI's key names (lora_up / lora_down / alpha)."""
        out = {}
        for i in range(self.cfg.base_layers):
            for target in LORA_TARGETS:
                m, key = self.lora_for(i, target), lora_key(i, target)
                out[f"{key}.lora_up.weight"] = m.up.detach()
                out[f"{key}.lora_down.weight"] = m.down.detach()
                out[f"{key}.alpha"] = m.alpha.detach()
        return out

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """Every weight and buffer under the adapter file's key names (branch, G-CA and micro weights; LoRA in
        ComfyUI naming), as held: views of the adapter's own storage in its own dtypes, not copies."""
        # Weights only: a layer's extra state (the host's attention config) never enters the file.
        weights = {k for k, _ in self.named_parameters(remove_duplicate=False)}
        weights |= {k for k, _ in self.named_buffers(remove_duplicate=False)}
        sd = {k: v for k, v in self.state_dict().items() if k in weights and not k.startswith("lora.")}
        sd.update(self.lora_state_dict())
        return sd

    def file_state_dict(self) -> dict[str, torch.Tensor]:
        """What the adapter file holds: file_tensors in float32."""
        return {k: v.detach().float().contiguous() for k, v in self.file_tensors().items()}
