"""Benchmark: patch-wise joint modulation on a real-architecture Wan DiT (ComfyUI's WanModel, random
weights, CPU-sized), for outputs from 1080p to 4K.

    bash .ci/bench            # prints a Markdown table; README.md shows the latest one

Per output size it reports DiT evaluations per step (base and auxiliary patches), attention FLOPs of
those patches against one full-frame pass, wall time per step, the share of wall time spent outside the
DiT (cropping, weights, fusion, copies), and the process's peak resident memory. Each size runs in its own
process so peaks do not mix. Times are for one run on this machine: compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SIZES = {"1080p": (1080, 1920), "2K": (1440, 2560), "4K": (2160, 3840)}
PATCH_PX = (480, 832)  # Wan 2.1's native size
STRIDE = 8
DIT = dict(dim=256, ffn_dim=1024, num_heads=2, num_layers=4)  # head dim 128 as in Wan; CPU-sized depth/width
FULL_FRAME_MAX_TOKENS = 9000  # a full-frame pass is timed only where the CPU can afford it


def attention_flops(tokens: int) -> float:
    """QK^T and AV of one layer's self-attention: 2 * (2 L^2 d)."""
    return 4.0 * tokens**2 * DIT["dim"] * DIT["num_layers"]


def run_one(name: str, frames: int, steps: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from harness.paths import comfy_root

    sys.path.insert(0, str(comfy_root()))
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.ldm.wan.model
    import comfy.ops
    import torch
    from harness.tiny_models import _init_

    from models.blend import StitchConfig
    from models.joint import JointModulation
    from models.plan import Kind, PlanConfig, latent_frames, make_plan

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    dit = comfy.ldm.wan.model.WanModel(
        model_type="t2v", in_dim=16, out_dim=16, operations=comfy.ops.disable_weight_init, **DIT
    )
    _init_(dit, 0)
    H, W = SIZES[name]
    T = latent_frames(frames)
    plan = make_plan(PlanConfig((T, H // STRIDE, W // STRIDE), (PATCH_PX[0] // STRIDE, PATCH_PX[1] // STRIDE), 21))
    jm = JointModulation.build(plan, StitchConfig(), batch_size=1)
    x = torch.randn(1, 16, T, H // STRIDE, W // STRIDE)
    context = torch.zeros(1, 8, 4096)
    dit_time = 0.0

    def fn(xs, patches):
        nonlocal dit_time
        t0 = time.perf_counter()
        out = dit(xs, torch.full((xs.shape[0],), 500.0), context.repeat(xs.shape[0], 1, 1))
        dit_time += time.perf_counter() - t0
        return out

    jm(x, fn)  # warm-up: first-call allocations and kernels
    dit_time = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        x = jm(x, fn)
    wall = (time.perf_counter() - start) / steps
    dit_step = dit_time / steps
    tokens = lambda b: T * (b.height // 2) * (b.width // 2)  # noqa: E731  2x2 latent cells per token
    patch_flops = sum(attention_flops(tokens(b)) for b in plan.boxes) * len(plan.windows)
    full_tokens = T * (H // STRIDE // 2) * (W // STRIDE // 2)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the full-frame pass below
    full_wall = None
    if full_tokens <= FULL_FRAME_MAX_TOKENS:
        t0 = time.perf_counter()
        dit(x, torch.full((1,), 500.0), context)
        full_wall = time.perf_counter() - t0
    return {
        "size": name,
        "latent": [T, H // STRIDE, W // STRIDE],
        "base": plan.count(Kind.BASE) * len(plan.windows),
        "aux": len(plan.aux_boxes()) * len(plan.windows),
        "flops_ratio": patch_flops / attention_flops(full_tokens),
        "wall_step_s": wall,
        "outside_dit": (wall - dit_step) / wall,
        "full_frame_s": full_wall,
        "peak_rss_mib": peak,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1, help="pixel frames (1 + 4k); 1 keeps 4K within minutes")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.frames, args.steps)))
        return
    rows = []
    for name in SIZES:
        cmd = [sys.executable, __file__, "--one", name, "--frames", str(args.frames), "--steps", str(args.steps)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    print(f"Wan DiT {DIT}, random weights, CPU; patch {PATCH_PX[1]}x{PATCH_PX[0]}, {args.frames} frame(s), "
          f"weighted stitch, patch batch 1, one model evaluation per step (cfg 1).\n")  # fmt: skip
    print("| output | latent T×H×W | DiT evals/step (base + aux) | attention FLOPs vs full frame | wall/step | "
          "outside DiT | full-frame pass | peak RSS |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    base = rows[0]["wall_step_s"]
    for r in rows:
        full = f"{r['full_frame_s'] / base:.2f}×" if r["full_frame_s"] else "not run (too slow on CPU)"
        print(
            f"| {r['size']} | {'×'.join(map(str, r['latent']))} | {r['base'] + r['aux']} ({r['base']} + {r['aux']}) "
            f"| {r['flops_ratio']:.3f} | {r['wall_step_s'] / base:.2f}× | {100 * r['outside_dit']:.1f}% | {full} "
            f"| {r['peak_rss_mib']:.0f} MiB |"
        )
    print(
        f"\nwall/step and full-frame pass are relative to the 1080p wall/step ({base:.2f} s on the machine that ran it)."
    )


if __name__ == "__main__":
    main(sys.argv[1:])
