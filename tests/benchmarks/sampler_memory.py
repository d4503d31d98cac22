"""Measures how many full-size latents ComfyUI's sampler keeps while PatchVSR samples, against the count in
models/memory.py that the pack adds to ComfyUI's memory reservation.

    MALLOC_MMAP_THRESHOLD_=65536 .venv/bin/python tests/benchmarks/sampler_memory.py

The pack's sampler (nodes/sampler.py `sample`, through ComfyUI's own sample_custom) runs in this process
on the CPU with the tiny Wan DiT, on two latents of different sizes; the growth of the process's peak
resident memory between them, divided by the growth of one float32 copy of the latent, is the number of
full-size copies alive at the peak (DiT activations, weights and everything else do not grow with the
frame and cancel). Peaks come from the kernel's high-water mark, reset before each run; a fixed malloc
mmap threshold makes every latent-sized tensor its own mapping, returned on free (glibc otherwise keeps
freed blocks below 32 MB and the peak counts them).
"""

from __future__ import annotations

import gc
import math
import sys
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from harness.inprocess import import_comfy  # noqa: E402
from harness.paths import WORK  # noqa: E402
from harness.tiny_models import DIT, ensure_in_subprocess  # noqa: E402

from models.memory import sampler_frames  # noqa: E402

LATENTS = [(16, 2, 128, 192), (16, 2, 256, 384)]  # [C, T, H, W]: the second holds 4x the first
PATCH = (32, 48)  # latent cells: as few patches as keep the DiT's share of the peak small and constant


def status_kb(field: str) -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))


def load_pack():
    """The pack as package `patchvsr` without ComfyUI's custom-node loader (its nodes only need comfy)."""
    pkg = types.ModuleType("patchvsr")
    pkg.__path__ = [str(REPO)]
    sys.modules["patchvsr"] = pkg
    import patchvsr.nodes.sampler as sampler

    return sampler


def peak_growth(pack, model, shape, cfg: float, sampler: str = "euler") -> int:
    """Bytes the peak resident memory grows by while sampling a latent of `shape`, from just before."""
    from models.plan import Geometry, PlanConfig, make_plan

    c, t, h, w = shape
    geometry = Geometry("wan2.1", c, 8, (h * 4, w * 4), (h * 8, w * 8), (PATCH[0] * 8, PATCH[1] * 8), (t - 1) * 4 + 1)
    plan = make_plan(PlanConfig((t, h, w), PATCH, 21), geometry=geometry)
    latent = {"samples": torch.randn(1, c, t, h, w, generator=torch.Generator().manual_seed(0))}
    text = [[torch.zeros(1, 8, 4096), {}]]
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")  # resets the peak to the current resident size
    before = status_kb("VmRSS")
    settings = pack.SamplerSettings(seed=0, steps=2, cfg=cfg, sampler_name=sampler, t0=0.5, patch_batch=1)
    out = pack.sample(model, text, text, latent, plan, settings)
    peak = status_kb("VmHWM")
    del out
    return (peak - before) * 1024


def main() -> None:
    torch.set_num_threads(1)
    ensure_in_subprocess(WORK / "models")
    import_comfy()
    import comfy.sd

    sampler = load_pack()
    model = comfy.sd.load_diffusion_model(str(WORK / "models" / "diffusion_models" / f"{DIT.name}.safetensors"))
    peak_growth(sampler, model, LATENTS[0], 1.0)  # warm-up: lazy imports and allocator pools
    print("| sampler | cfg | measured copies (CPU) | counted for a GPU (models/memory.py) |")
    print("|---|---|---|---|")
    for name in ("euler", "dpmpp_2m"):
        for cfg, conds in ((1.0, 1), (2.0, 2)):
            small, big = (peak_growth(sampler, model, s, cfg, name) for s in LATENTS)
            copy = (math.prod(LATENTS[1]) - math.prod(LATENTS[0])) * 4
            print(f"| {name} | {cfg} | {(big - small) / copy:.1f} | {sampler_frames(conds, False)} |")


if __name__ == "__main__":
    main()
