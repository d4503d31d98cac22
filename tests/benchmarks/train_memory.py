"""Benchmark: the trainer's memory for Wan 2.1 1.3B and 14B, measured on tiny-width models and scaled.

    cd tests && OMP_NUM_THREADS=1 ../.venv/bin/python -m benchmarks.train_memory   # prints a Markdown table

What is measured and what is derived:
- Parameter counts are exact: the real WanModel and the adapter (default branch depths, rank 16) are built on
  the meta device (no memory) and counted.
- Bytes per weight are measured on the tiny model after a real training step: the frozen base's tensors
  (bf16), and the trained weights with their gradients and AdamW moments (fp32).
- Activations are measured on a model of the real depth (30 / 40 blocks, default branches) at width 128
  with the real FFN/width ratio: the peak of a training step (torch.distributed's MemTracker, CPU kernels)
  at two token counts; the difference per token is the activation cost per token, which grows linearly with
  the width (every activation is tokens x width, or tokens x FFN width at a fixed ratio). It is scaled to
  the real width and to an 81-frame 480x832 crop. CUDA's kernels save about the same tensors for backward
  (flash attention: its output and logsumexp, like the CPU's), so this is an estimate for a GPU, not a GPU
  measurement.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
for p in (REPO, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

WAN = {  # Wan 2.1 T2V configs (ComfyUI's detection of the released checkpoints)
    "Wan 2.1 1.3B": dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "Wan 2.1 14B": dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
}
CROP = (81, 480, 832)  # frames, pixels: the trainer's default crop on Wan 2.1
TINY_DIM = 128  # one head of Wan's head width


def tokens(frames: int, h: int, w: int) -> int:
    """Base-model tokens of a clip: VAE 4x temporal, 8x spatial; patch 1x2x2."""
    return (1 + (frames - 1) // 4) * (h // 16) * (w // 16)


def _no_handle_hooks():
    """MemTracker hooks every parameter's gradient; the frozen base has none (it would refuse)."""

    class NoHandle:
        def remove(self):
            pass

    for name in ("register_hook", "register_post_accumulate_grad_hook"):
        orig = getattr(torch.Tensor, name)
        setattr(torch.Tensor, name, lambda self, hook, _o=orig: _o(self, hook) if self.requires_grad else NoHandle())


def counts(cfg: dict) -> dict[str, int]:
    """Exact parameter counts of the base and of each trained part, from modules on the meta device."""
    import comfy.ldm.wan.model
    import comfy.ops

    from models.adapter import AdapterConfig, PatchVSRAdapter

    with torch.device("meta"):
        dm = comfy.ldm.wan.model.WanModel(model_type="t2v", in_dim=16, out_dim=16, operations=comfy.ops.disable_weight_init, **cfg)  # fmt: skip
        acfg = AdapterConfig.for_base(dm.dim, dm.num_layers, dm.num_heads, dm.in_dim, lora_rank=16, lora_alpha=16.0)
        adapter = PatchVSRAdapter(acfg, dm.blocks, dm.patch_embedding)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {
        "base": n(dm),
        "patch branch": n(adapter.patch_branch),
        "global branch": n(adapter.global_branch),
        "G-CA": n(adapter.gca),
        "LoRA": n(adapter.lora),
        "micro": n(adapter.micro),
        "trained": n(adapter),
        "K": len(acfg.patch_blocks) + len(acfg.global_blocks),
    }


def step_peak(cfg: dict, latent: tuple[int, int, int]):
    """(peak bytes of a training step, the trainer) on a tiny-width model with cfg's depth and FFN ratio."""
    from harness.inprocess import tiny_wan, training_mode
    from torch.distributed._tools.mem_tracker import MemTracker

    import models.train as mt
    from models.latents import Sample
    from models.train_config import TrainConfig

    T, H, W = latent
    gen = torch.Generator().manual_seed(0)
    sample = Sample(*(torch.randn(1, 16, T, H, W, generator=gen) for _ in range(3)), 2.0, "")
    tcfg = TrainConfig(data="-", out="-", work="-", crop_px=(H * 8, W * 8), aspect=(W / H, W / H))
    ffn = round(TINY_DIM * cfg["ffn_dim"] / cfg["dim"])
    with training_mode():
        tr = mt.Trainer(
            tcfg, tiny_wan(dim=TINY_DIM, layers=cfg["num_layers"], ffn=ffn), lambda c: torch.zeros(1, 1, 4096)
        )
        tr.train_step([sample])  # AdamW's moments exist from here on, as in a long run
        tracker = MemTracker()
        tracker.track_external(tr.adapter, tr.opt, tr.dm)
        with tracker:
            tr.train_step([sample])
        tr.close()
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"], tr


def measure(name: str, cfg: dict) -> dict:
    n = counts(cfg)
    small, large = (2, 16, 26), (2, 32, 52)  # latent T, H, W: 208 and 832 tokens
    peak_s, tr = step_peak(cfg, small)
    peak_l, _ = step_peak(cfg, large)
    peak_m, _ = step_peak(cfg, (2, 24, 40))  # 480 tokens: on the line through the other two (linear memory)
    per_token = (peak_l - peak_s) / (large[0] * large[1] * large[2] / 4 - small[0] * small[1] * small[2] / 4)
    base_b = sum(p.nbytes for p in tr.dm.parameters()) / sum(p.numel() for p in tr.dm.parameters())
    opt_b = sum(t.nbytes for st in tr.opt.state.values() for t in st.values() if t.dim() > 0)
    trained = sum(p.numel() for p in tr.params)
    train_b = (sum(p.nbytes for p in tr.params) * 2 + opt_b) / trained  # weight + gradient (same dtype) + moments
    act = per_token * cfg["dim"] / TINY_DIM * tokens(*CROP)
    peaks = [peak_s, peak_m, peak_l]
    return dict(name=name, n=n, base_b=base_b, train_b=train_b, per_token=per_token, act=act, cfg=cfg, peaks=peaks)


def table(rows: list[dict]) -> str:
    gb = 1e9
    out = [
        "| base | P_base, P_train (counted) | bytes per weight: base, trained (measured) | base weights | trained weights + gradients + AdamW | activations, 81 x 480x832 crop (measured per token at width 128, scaled) | one GPU (DDP) | per GPU, 8 GPUs sharded (--shard) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = r["n"]["base"] * r["base_b"] / gb
        trained = r["n"]["trained"] * r["train_b"] / gb
        act = r["act"] / gb
        # Sharded: the trained state split 8 ways, plus the largest unit gathered (one copied block, weights and
        # gradients in fp32) while it runs, and the next one prefetched.
        d, f = r["cfg"]["dim"], r["cfg"]["ffn_dim"]
        block = 4 * d * d + 4 * d * d + 2 * d * f + 6 * d  # self-attention, cross-attention, FFN, modulation
        unit = 2 * block * 8 / gb
        out.append(
            f"| {r['name']} | {r['n']['base'] / 1e9:.2f} B, {r['n']['trained'] / 1e9:.2f} B | {r['base_b']:.2f}, "
            f"{r['train_b']:.1f} | {base:.1f} GB | {trained:.1f} GB | {act:.1f} GB ({r['per_token'] / 1e3:.1f} kB per token at width 128) | "
            f"{base + trained + act:.0f} GB | {base + trained / 8 + unit + act:.0f} GB |"
        )
    return "\n".join(out)


def main() -> None:
    torch.set_num_threads(1)
    from harness.inprocess import import_comfy

    comfy = import_comfy()
    # ComfyUI's CPU default is sub-quadratic chunked attention; on a GPU it runs PyTorch's SDPA (flash),
    # whose backward keeps O(tokens) memory. Measure with that.
    comfy.ldm.wan.model.optimized_attention = comfy.ldm.modules.attention.attention_pytorch
    _no_handle_hooks()
    rows = []
    for name, cfg in WAN.items():
        rows.append(measure(name, cfg))
        r = rows[-1]
        print(r["name"], r["n"], f"per token {r['per_token']:.0f} B at width 128, peaks {r['peaks']}", flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
