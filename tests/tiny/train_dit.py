"""Trains the tiny Wan DiT (ComfyUI's WanModel) as a rectified-flow model of the trained tiny VAE's latents
of camera-move clips (crops at the sampler's patch size), so that the training-free mode's SDEdit from a
bicubic-upscaled latent moves it towards sharp photographs. Fixed seed; 3000 steps on 96 clips of 9 frames
(3 latent frames), about 16 minutes on one thread of the 2-core machine.

    cd tests && ../.venv/bin/python -m tiny.train_dit     # after tiny.train_vae

Writes tests/assets/models/diffusion_models/patchvsr-tiny-wan21-t2v-photo.safetensors (fp16) and prints
its sha256.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import DIT_FILE, VAE_FILE, latent_stats, save_fp16, wan_vae
from .photos import TRAIN, camera_clip, load_photo, skimage_data
from .train_vae import to_vae

DIT_DIM, DIT_LAYERS, DIT_FFN = 128, 4, 512  # one head (ComfyUI reads num_heads = dim // 128)
PATCH_LATENT = 16  # training crop in latent cells: the demo's and the proofs' 128-pixel patches


def load_vae(path: Path = VAE_FILE):
    from safetensors.torch import load_file

    vae = wan_vae()
    vae.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_set(vae, clips: int, gen: torch.Generator, size=(160, 160), frames=9) -> torch.Tensor:
    """[clips, 16, 1 + (frames - 1) / 4, h, w] normalised latents (Wan21 process_in) of camera-move clips over
    the photos."""
    mean, std = latent_stats()
    root = skimage_data()
    photos = [load_photo(root / name) for name in TRAIN]
    out = []
    for _ in range(clips):
        photo = photos[int(torch.randint(len(photos), (), generator=gen))]
        scale = 1.0 + float(torch.rand((), generator=gen))  # sharp: 1 to 2 photo pixels per clip pixel
        out.append((vae.encode(to_vae(camera_clip(photo, size, frames, gen, scale=scale))) - mean) / std)
    return torch.cat(out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--frames", type=int, default=9,
        help="pixel frames per training clip (1 + 4k): 9 gives 3 latent frames, the first-frame latent and two chunks",
    )  # fmt: skip
    parser.add_argument("--out", default=str(DIT_FILE))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    started = time.monotonic()

    # 1. The data: HR latents of the training clips, encoded once by the trained VAE.
    latents = encode_set(load_vae(), args.clips, gen, frames=args.frames)
    print(f"encoded {tuple(latents.shape)} in {time.monotonic() - started:.0f} s", flush=True)
    # 2. The model: ComfyUI's WanModel, initialised as the random tiny DiT is.
    from harness.inprocess import tiny_wan, training_mode

    dm = tiny_wan(dim=DIT_DIM, layers=DIT_LAYERS, ffn=DIT_FFN, seed=args.seed).train().requires_grad_(True)
    opt = torch.optim.AdamW(dm.parameters(), lr=args.lr, weight_decay=0.0)
    context = torch.zeros(args.batch, 8, 4096)  # the null prompt, as the test graphs' zero conditioning
    n, _, _, h, w = latents.shape
    p = PATCH_LATENT
    warmup = 50
    with training_mode():
        for step in range(args.steps):
            idx = torch.randint(n, (args.batch,), generator=gen)
            ys = torch.randint(h - p + 1, (args.batch,), generator=gen)
            xs = torch.randint(w - p + 1, (args.batch,), generator=gen)
            z0 = torch.stack([latents[i, :, :, y : y + p, x : x + p] for i, y, x in zip(idx, ys, xs)])
            # Flow times: half uniform, half below 0.6 where SDEdit from an upscaled latent starts.
            u = torch.rand(args.batch, generator=gen)
            t = torch.where(torch.arange(args.batch) % 2 == 0, u, 0.6 * u).clamp(1e-3, 1 - 1e-3)
            eps = torch.randn(z0.shape, generator=gen)
            tb = t.view(-1, 1, 1, 1, 1)
            zt = (1 - tb) * z0 + tb * eps
            loss = F.mse_loss(dm(zt, t * 1000, context), eps - z0)  # velocity target of rectified flow
            lr = (
                args.lr
                * min(1.0, (step + 1) / warmup)
                * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
            )
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(dm.parameters(), 1.0)
            opt.step()
            if step % 100 == 0 or step == args.steps - 1:
                print(f"step {step}  loss {loss.item():.4f}  {time.monotonic() - started:.0f} s", flush=True)
            if (step + 1) % 250 == 0 and step + 1 < args.steps:
                save_fp16(dm, DIT_FILE.with_suffix(".partial.safetensors"), {"step": step + 1})
    took = time.monotonic() - started
    digest = save_fp16(dm, Path(args.out), {
        "recipe": "tiny.train_dit", "steps": args.steps, "clips": args.clips, "frames": args.frames, "lr": args.lr,
        "seed": args.seed,
        "dim": DIT_DIM, "num_layers": DIT_LAYERS, "ffn_dim": DIT_FFN, "train_s": round(took)})  # fmt: skip
    print(f"trained in {took:.0f} s")
    print(f"sha256 {digest}  {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
