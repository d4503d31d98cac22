"""Benchmark: patch-wise joint modulation on a real-architecture Wan DiT (ComfyUI's WanModel, random
weights, CPU-sized), for outputs from 1080p to 4K, in each fusion mode side by side.

    bash .ci/bench            # prints Markdown tables; docs/performance.md shows the latest ones

Per output size and fusion mode it reports DiT evaluations and token-weighted cost per step against the
base grid (mean over a 50-step run: SHIFTED changes grids between steps), the seam score and colour drift
of the stand-in models in tests/harness/fusion_proxies.py, and the wall time per step (each grid timed
once, combined by the 50-step schedule), the share of wall time spent outside the DiT and the process's
peak resident memory. Each size runs in its own process so peaks do not mix. Times are for one run on this
machine: compare ratios, not seconds. A second table projects FLOPs and time per step for the real Wan 2.1
1.3B and 14B configs on a named GPU: a projection from a FLOP count, not a measurement. A last section
measures the cost of a trained adapter's step against a plain step (one patch, cond and uncond rows) on a
DiT of Wan 1.3B's depth ratio, and projects it for the real configs.
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
MODES = ("weighted", "shifted", "naive")
RUN_STEPS = 50  # the paper's step count: per-step figures are means over a run this long

# Projection (not measured): the real Wan 2.1 configs (their config.json), an 81-frame clip, on one GPU.
WAN = {"Wan 2.1 1.3B": dict(dim=1536, ffn_dim=8960, num_layers=30), "Wan 2.1 14B": dict(dim=5120, ffn_dim=13824, num_layers=40)}  # fmt: skip
TEXT_TOKENS = 512  # umT5 context length Wan pads to
CLIP_FRAMES = 81
GPU = "H100 SXM"
GPU_TFLOPS = 989.0  # dense bf16 peak
UTILISATION = 0.4  # a typical share of peak for long-sequence DiT inference
# Whole-clip recipes projected: (label, fusion mode, steps, model evaluations per step)
RECIPES = [
    ("paper: weighted, 50 steps, cfg 5", "weighted", 50, 2),
    ("shifted, 50 steps, cfg 5", "shifted", 50, 2),
    ("shifted, 4 steps, cfg 1", "shifted", 4, 1),
]


def attention_flops(tokens: int) -> float:
    """QK^T and AV of one layer's self-attention: 2 * (2 L^2 d)."""
    return 4.0 * tokens**2 * DIT["dim"] * DIT["num_layers"]


def dit_flops(tokens: int, dim: int, ffn_dim: int, num_layers: int) -> float:
    """Multiply-adds x 2 of one Wan DiT pass over `tokens` video tokens: per block self-attention (q, k, v, o
    projections and the L x L attention), text cross-attention (q, o on video tokens, k, v on the text, the
    L x 512 attention) and the FFN; embeddings, modulation and head are under 1% and left out."""
    per_token = 2 * (4 * dim * dim + 2 * dim * dim + 2 * dim * ffn_dim)
    attention = 4 * tokens * tokens * dim + 4 * tokens * TEXT_TOKENS * dim
    text_kv = 2 * 2 * TEXT_TOKENS * dim * dim
    return num_layers * (tokens * per_token + attention + text_kv)


def run_one(name: str, frames: int) -> dict:
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
    from harness.fusion_proxies import evaluations, measure, token_cost
    from harness.tiny_models import _init_

    from models.blend import StitchConfig, StitchMode
    from models.joint import FusionSchedule
    from models.plan import PlanConfig, latent_frames, make_plan

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    dit = comfy.ldm.wan.model.WanModel(
        model_type="t2v", in_dim=16, out_dim=16, operations=comfy.ops.disable_weight_init, **DIT
    )
    _init_(dit, 0)
    H, W = SIZES[name]
    T = latent_frames(frames)
    plan = make_plan(PlanConfig((T, H // STRIDE, W // STRIDE), (PATCH_PX[0] // STRIDE, PATCH_PX[1] // STRIDE), 21))
    x = torch.randn(1, 16, T, H // STRIDE, W // STRIDE)
    context = torch.zeros(1, 8, 4096)
    dit_time = 0.0

    def fn(xs, patches):
        nonlocal dit_time
        t0 = time.perf_counter()
        out = dit(xs, torch.full((xs.shape[0],), 500.0), context.repeat(xs.shape[0], 1, 1))
        dit_time += time.perf_counter() - t0
        return out

    def timed(jm) -> tuple[float, float]:
        """(wall, DiT) seconds of one evaluation of `jm`."""
        nonlocal dit_time
        dit_time = 0.0
        start = time.perf_counter()
        jm(x, fn)
        return time.perf_counter() - start, dit_time

    # Proxies at the real latent size (one frame; the temporal proxy is in the unit tests).
    proxy_plan = make_plan(PlanConfig((1, H // STRIDE, W // STRIDE), plan.config.patch_hw, 21))
    rows, seen = [], {}
    timed(FusionSchedule.build(plan, StitchConfig(StitchMode.NAIVE), 1).at(0, 1))  # warm-up: first-call allocations
    for mode in MODES:
        stitch = StitchConfig(StitchMode(mode))
        schedule = FusionSchedule.build(plan, stitch, batch_size=1)
        for jm in schedule.layouts:  # each distinct grid timed once
            key = tuple(p for b in jm.batches for p in b)
            if key not in seen:
                seen[key] = timed(jm)
        per_step = [seen[tuple(p for b in schedule.at(i, RUN_STEPS).batches for p in b)] for i in range(RUN_STEPS)]
        wall = sum(w for w, _ in per_step) / RUN_STEPS
        dit_step = sum(d for _, d in per_step) / RUN_STEPS
        proxies = {m: measure(proxy_plan, StitchConfig(StitchMode(mode)), m) for m in ("independent", "following")}
        rows.append({
            "size": name, "mode": mode, "latent": [T, H // STRIDE, W // STRIDE],
            "evals": evaluations(schedule, RUN_STEPS), "cost": token_cost(schedule, RUN_STEPS),
            "seam": {m: p["seam"] for m, p in proxies.items()}, "drift": {m: p["drift"] for m, p in proxies.items()},
            "wall_step_s": wall, "outside_dit": (wall - dit_step) / wall,
        })  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the full-frame pass below
    full_tokens = T * (H // STRIDE // 2) * (W // STRIDE // 2)
    full_wall = None
    if full_tokens <= FULL_FRAME_MAX_TOKENS:
        t0 = time.perf_counter()
        dit(x, torch.full((1,), 500.0), context)
        full_wall = time.perf_counter() - t0
    for r in rows:
        r.update(peak_rss_mib=peak, full_frame_s=full_wall)
    return {"rows": rows}


def step_flops(schedule, steps: int, cfg: dict) -> float:
    """Mean DiT FLOPs per step over a run of `steps` (SHIFTED's last step is the weighted scheme's)."""
    return (
        sum(
            dit_flops(w.length * (b.height // 2) * (b.width // 2), **cfg)
            for i in range(steps)
            for batch in schedule.at(i, steps).batches
            for w, b in batch
        )
        / steps
    )


# The adapter section: a DiT whose patch branch is as deep, relative to the base, as Wan 2.1 1.3B's (K =
# layers / 6: 1 of 6 here, 5 of 30 there), at one 480x832 patch with its cond and uncond rows (cfg > 1).
ADAPTER_DIT = dict(dim=256, ffn_dim=1024, num_heads=2, num_layers=6)
ADAPTER_REPEATS = 3  # timed runs per variant after a warm-up; the median is reported


def adapter_cost(frames: int) -> dict:
    """CPU seconds of one model evaluation (a patch's cond and uncond rows, as the sampler batches them)
    plain, with the adapter as the sampler runs it (patch branch once for both rows, global tokens cached),
    and with the patch branch recomputed per row (the cost the sharing removes); and the one-off global
    branch per patch and prompt."""
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

    from models import adapter_runtime as rt
    from models.adapter import AdapterConfig, PatchVSRAdapter
    from models.plan import latent_frames

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    dit = comfy.ldm.wan.model.WanModel(
        model_type="t2v", in_dim=16, out_dim=16, operations=comfy.ops.disable_weight_init, **ADAPTER_DIT
    )
    _init_(dit, 0)
    d = ADAPTER_DIT
    adapter = PatchVSRAdapter(AdapterConfig.for_base(d["dim"], d["num_layers"], d["num_heads"], 16),
                              dit.blocks, dit.patch_embedding)  # fmt: skip
    after = PatchVSRAdapter(AdapterConfig.for_base(d["dim"], d["num_layers"], d["num_heads"], 16,
                                                   gca_in_cross_attention=False), dit.blocks, dit.patch_embedding)  # fmt: skip
    for p in (*adapter.parameters(), *after.parameters()):  # small non-zero outputs, as a trained adapter has
        p.add_(torch.randn(p.shape) * 0.01)
    T, h, w = latent_frames(frames), PATCH_PX[0] // STRIDE, PATCH_PX[1] // STRIDE
    x = torch.randn(2, 16, T, h, w)
    t = torch.full((2,), 0.5)
    context = torch.randn(2, 64, 4096)  # cond and uncond prompts
    lr, glob = torch.randn(1, 16, T, h, w), torch.randn(2, 16, T, h, w)
    mask = torch.zeros(2, 1, T, h, w)
    mask[..., : h // 2, : w // 2] = 1
    micro = adapter.micro(rt.micro_vector(2.0, 0.25, (0, 0, 0.5, 0.5), 2, "cpu"))
    tokens = rt.global_tokens(dit, adapter, glob, mask, context)

    def plain():
        dit(x, t * rt.TIMESTEP_SCALE, context)

    def shared():  # the patch branch run at this evaluation, once for both rows
        call = rt.AdapterCall(tuple(rt.patch_hints(dit, adapter, lr)), tokens, micro, repeat=2)
        rt.forward(dit, adapter, x, t, context, call)

    hints = tuple(rt.patch_hints(dit, adapter, lr))

    def cached():  # as nodes/patchwise.py runs it when the hints fit its cache: made once per run
        rt.forward(dit, adapter, x, t, context, rt.AdapterCall(hints, tokens, micro, repeat=2))

    def shared_after():  # the same with G-CA after the block
        call = rt.AdapterCall(tuple(rt.patch_hints(dit, after, lr)), tokens, micro, repeat=2)
        rt.forward(dit, after, x, t, context, call)

    def per_row():
        call = rt.AdapterCall(tuple(rt.patch_hints(dit, adapter, lr.expand(2, -1, -1, -1, -1))), tokens, micro)
        rt.forward(dit, adapter, x, t, context, call)

    def global_once():
        rt.global_tokens(dit, adapter, glob[:1], mask[:1], context[:1])

    # Interleaved rounds, so a change in the machine's load during the run hits every variant alike; CPU
    # time of this process (one thread), which a busy shared machine disturbs far less than wall time.
    torch.set_num_threads(1)
    variants = {"plain": plain, "cached": cached, "shared": shared, "after": shared_after, "per_row": per_row,
                "global": global_once}  # fmt: skip
    times = {name: [] for name in variants}
    shared()  # warm-up: first-call allocations
    for _ in range(ADAPTER_REPEATS):
        for name, fn in variants.items():
            start = time.process_time()
            fn()
            times[name].append(time.process_time() - start)
    out = {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}
    return out | {"cfg": adapter.cfg.__dict__, "tokens": T * (h // 2) * (w // 2)}


def adapter_projection() -> list[dict]:
    """FLOPs an adapter adds to one patch's model evaluation, per real config and G-CA placement, with
    cfg > 1 (2 rows) and cfg 1: the patch branch once per patch (K copied blocks over the patch's tokens, a
    1-token prompt), G-CA in every block (keys and values on the global tokens, attention from every patch
    token; after the block it also projects its own query and output over the patch's tokens, inside the
    text cross-attention it shares both), the micro-conditions (negligible); the LoRA is merged. With the
    hints cached for the run (nodes/patchwise.py, when they fit) the patch branch leaves the step: G-CA alone."""
    T = latent_frames_of(CLIP_FRAMES)
    tokens = T * (PATCH_PX[0] // STRIDE // 2) * (PATCH_PX[1] // STRIDE // 2)
    g = tokens // 16  # two 2x2 merges
    out = []
    for model, cfg in WAN.items():
        dim, layers = cfg["dim"], cfg["num_layers"]
        k = max(1, layers // 6)
        block = dit_flops(tokens, dim, cfg["ffn_dim"], 1) - 4 * tokens * TEXT_TOKENS * dim - 4 * TEXT_TOKENS * dim * dim
        base = dit_flops(tokens, **cfg)  # per row
        for placement, qo in (("inside cross-attention (default)", 0), ("after the block", 2 * 2 * tokens * dim * dim)):
            gca = layers * (4 * tokens * g * dim + 2 * 2 * g * dim * dim + qo)  # per row
            out.append({"model": model, "placement": placement, "k": k, "cfg2": (k * block + 2 * gca) / (2 * base),
                        "cfg1": (k * block + gca) / base, "cached": gca / base})  # fmt: skip
    return out


def latent_frames_of(frames: int) -> int:
    return (frames - 1) // 4 + 1


def projection() -> list[dict]:
    """FLOPs per step and a projected time for an 81-frame clip, per Wan config, size and mode (cfg 1: one
    evaluation per step; cfg > 1 doubles it). Cost per patch from its token count, as the sampler runs it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from models.blend import StitchConfig, StitchMode
    from models.joint import FusionSchedule
    from models.plan import PlanConfig, latent_frames, make_plan

    out = []
    T = latent_frames(CLIP_FRAMES)
    for name, (H, W) in SIZES.items():
        plan = make_plan(PlanConfig((T, H // STRIDE, W // STRIDE), (PATCH_PX[0] // STRIDE, PATCH_PX[1] // STRIDE), 21))
        for model, cfg in WAN.items():
            row = {"size": name, "model": model}
            for mode in ("weighted", "shifted"):
                schedule = FusionSchedule.build(plan, StitchConfig(StitchMode(mode)), 1)

                row[mode] = step_flops(schedule, RUN_STEPS, cfg)
                for label, m, steps, evals in RECIPES:
                    if m == mode:
                        row[label] = steps * evals * step_flops(schedule, steps, cfg)
            row["full_frame"] = dit_flops(T * (H // STRIDE // 2) * (W // STRIDE // 2), **cfg)
            out.append(row)
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1, help="pixel frames (1 + 4k); 1 keeps 4K within minutes")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--projection", action="store_true", help="print only the projection (no CPU runs)")
    parser.add_argument("--adapter-only", action="store_true", help="only the adapter section")
    parser.add_argument("--fusion-only", action="store_true", help="only the fusion modes and the projection")
    args = parser.parse_args(argv)
    if args.one == "adapter":
        print(json.dumps(adapter_cost(args.frames)))
        return
    if args.one:
        print(json.dumps(run_one(args.one, args.frames)))
        return
    if args.projection:
        print_projection()
        return
    if not args.adapter_only:
        fusion_tables(args)
    if not args.fusion_only:
        adapter_tables(args)


def adapter_tables(args) -> None:
    cmd = [sys.executable, __file__, "--one", "adapter", "--frames", str(args.frames)]
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    d = ADAPTER_DIT
    print(f"\nAdapter step against a plain step, measured: Wan DiT {d} with the default adapter "
          f"({len(r['cfg']['patch_blocks'])} patch-branch blocks, {len(r['cfg']['global_blocks'])} global), random "
          f"weights, CPU; one {PATCH_PX[1]}x{PATCH_PX[0]} patch ({r['tokens']} tokens, {args.frames} frame(s)), its "
          f"cond and uncond rows in one evaluation (cfg > 1); one thread, CPU time, median of {ADAPTER_REPEATS} "
          "interleaved runs.\n")  # fmt: skip
    print("| evaluation | CPU time | vs plain |")
    print("|---|---|---|")
    for name, key in (("plain DiT", "plain"), ("with adapter, hints cached for the run (default)", "cached"),
                      ("with adapter, patch branch at this evaluation (hints not cached)", "shared"),
                      ("the same, G-CA after the block (opt-in)", "after"),
                      ("with adapter, patch branch per row", "per_row")):  # fmt: skip
        print(f"| {name} | {r[key]:.3f} s | {r[key] / r['plain']:.3f}× |")
    print(
        f"| global branch, once per patch and prompt per run (not per step) | {r['global']:.3f} s "
        f"| {r['global'] / r['plain']:.3f}× |"
    )
    print(f"\nProjection, not a measurement: FLOPs the adapter adds to a patch's evaluation for an {CLIP_FRAMES}-frame "
          "clip (patch branch once per patch, G-CA in every block; the LoRA is merged into the weights).\n")  # fmt: skip
    print("| model | G-CA | patch-branch blocks | adapter cost, cfg > 1 (2 rows) | cfg 1 | hints cached, any cfg |")
    print("|---|---|---|---|---|---|")
    for p in adapter_projection():
        print(f"| {p['model']} | {p['placement']} | {p['k']} | +{100 * p['cfg2']:.1f}% | +{100 * p['cfg1']:.1f}% "
              f"| +{100 * p['cached']:.1f}% |")  # fmt: skip


def fusion_tables(args) -> None:
    rows = []
    for name in SIZES:
        cmd = [sys.executable, __file__, "--one", name, "--frames", str(args.frames)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows += json.loads(out)["rows"]
    print(f"Wan DiT {DIT}, random weights, CPU; patch {PATCH_PX[1]}x{PATCH_PX[0]}, {args.frames} frame(s), "
          f"patch batch 1, one model evaluation per step (cfg 1); per-step figures are means over a "
          f"{RUN_STEPS}-step run. Seam and drift: stand-in models 'independent' / 'following' "
          f"(tests/harness/fusion_proxies.py), means over 4 tone draws.\n")  # fmt: skip
    print("| output | mode | DiT evals/step | token cost vs base grid | seam (indep / follow) | drift (indep / follow) "
          "| wall/step | vs base grid | outside DiT | peak RSS |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    grid = {r["size"]: r["wall_step_s"] for r in rows if r["mode"] == "naive"}  # the base grid alone
    base = grid["1080p"]
    for r in rows:
        print(
            f"| {r['size']} | {r['mode']} | {r['evals']:.1f} | {r['cost']:.3f}× "
            f"| {r['seam']['independent']:.2f} / {r['seam']['following']:.2f} "
            f"| {r['drift']['independent']:.3f} / {r['drift']['following']:.3f} "
            f"| {r['wall_step_s'] / base:.2f}× | {r['wall_step_s'] / grid[r['size']]:.2f}× | {100 * r['outside_dit']:.1f}% "
            f"| {r['peak_rss_mib']:.0f} MiB |"
        )
    full = next(r["full_frame_s"] for r in rows if r["size"] == "1080p")
    print(f"\nwall/step is relative to the 1080p base grid's (naive) wall/step ({base:.2f} s on the machine that "
          f"ran it), 'vs base grid' to the same size's; one full-frame 1080p pass took {full / base:.2f}× the "
          "1080p base grid's step.")  # fmt: skip
    print_projection()


def print_projection() -> None:
    print(f"\nProjection, not a measurement: FLOPs per step (cfg 1) for an {CLIP_FRAMES}-frame clip from the real "
          f"configs' dims and layers, and time per step on one {GPU} at {100 * UTILISATION:.0f}% of its "
          f"{GPU_TFLOPS:.0f} TFLOPS dense bf16 peak; cfg > 1 doubles both. Whole-clip times: the DiT alone "
          "(no VAE, text encoder or offloading), per recipe; the shifted stitch's last step runs the "
          "final grid (cells centred on the base seams), so a few-step run costs a little more per step.\n")  # fmt: skip
    print("| output | model | weighted PFLOP/step | shifted PFLOP/step | shifted / weighted | weighted s/step | "
          "shifted s/step | full frame (one pass) PFLOP | " + " | ".join(f"clip, {r[0]}" for r in RECIPES) + " |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|" + "---|" * len(RECIPES))
    rate = GPU_TFLOPS * 1e12 * UTILISATION
    for r in projection():
        clips = " | ".join(f"{r[label] / rate / 60:.1f} min" for label, *_ in RECIPES)
        print(
            f"| {r['size']} | {r['model']} | {r['weighted'] / 1e15:.2f} | {r['shifted'] / 1e15:.2f} "
            f"| {r['shifted'] / r['weighted']:.2f} | {r['weighted'] / rate:.1f} | {r['shifted'] / rate:.1f} "
            f"| {r['full_frame'] / 1e15:.2f} | {clips} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
