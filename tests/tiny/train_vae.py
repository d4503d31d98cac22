"""Trains the tiny Wan 2.1 VAE (ComfyUI's own class at width 16) as an autoencoder of camera-move clips cut
from scikit-image's sample photographs. Fixed seeds; four stages, each with its own cosine schedule, each from
the last one's weights (tests/tiny/README.md, Reproduce, has the commands): 1 and 5 frames at lr 3e-4 from the
random init (2000 steps, about 30 minutes on one thread of the shared 2-core machine) and at 2e-4 (4000 steps,
65 minutes), then 1, 5 and 9 frames (2400 steps, 37 minutes on two threads) and 1, 9, 17 and 33 frames at 1e-4
(1200 steps, 27 minutes), so that the causal cache's later chunks are trained too.

Writes tests/assets/models/vae/patchvsr-tiny-wan21-vae-photo.safetensors (fp16; --out elsewhere) and prints
its sha256 and the held-out PSNR.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import VAE_FILE, latent_stats, psnr, save_fp16, wan_vae
from .photos import HELD_OUT, TRAIN, camera_clip, heldout_clip, load_photo, skimage_data


def to_vae(clip: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> [1, 3, N, H, W] in [-1, 1], as ComfyUI's VAE.encode prepares pixels."""
    return clip.permute(1, 0, 2, 3)[None] * 2 - 1


@torch.no_grad()
def evaluate(vae, frames: int = 17, size=(192, 288)) -> dict[str, float]:
    """PSNR (dB, pixels in [0, 1]) of encode -> decode on the held-out photos' clips (17 frames: five causal
    chunks, so errors that build up from chunk to chunk through the temporal cache are measured too)."""
    vae.eval()
    out = {}
    for name in HELD_OUT:
        x = to_vae(heldout_clip(name, size, frames))
        y = vae.decode(vae.encode(x)).clamp(-1, 1)
        out[name] = psnr((y + 1) / 2, (x + 1) / 2)
    vae.train()
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stop-at", type=int, default=None, help="stop after this many steps of the --steps schedule (time budget)"
    )
    parser.add_argument(
        "--init", default=None,
        help="continue from these weights (a stage of the recipe: README Reproduce) instead of the random init",
    )  # fmt: skip
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument(
        "--frames", default="1,5",
        help="clip lengths the steps cycle through (1 = a batch of 4 stills); 9 and up train the causal cache's "
        "steady state (the third and later 4-frame chunks), which 1 and 5 never reach; 17 and 33 keep errors "
        "from building up over chunks (clips over 9 frames use a smaller crop)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads (stages 3-4 of the recipe use 2)")
    parser.add_argument("--out", default=str(VAE_FILE))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # the machine's 2 cores are shared; stages 1-2 are timed on one thread
    cycle = [int(f) for f in args.frames.split(",")]
    if any(f != 1 and (f - 1) % 4 for f in cycle):
        parser.error(f"--frames {args.frames}: every clip length must be 1 + 4k (the VAE's causal chunks)")
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    # 1. Data: every training photograph, preloaded; clips are cut on the fly.
    root = skimage_data()
    photos = [load_photo(root / name) for name in TRAIN]
    # 2. Model: ComfyUI's class, initialised as the random tiny VAE is (its ops skip torch's init).
    from harness.tiny_models import _init_

    vae = wan_vae()
    _init_(vae, args.seed)
    with torch.no_grad():  # every residual block starts as its shortcut (zero-init last conv): trains faster
        for name, m in vae.named_modules():
            if name.endswith("residual.6"):
                m.weight.zero_()
    if args.init:  # stage 2 of the recipe: the same loss, a new cosine from the stage-1 weights
        from safetensors.torch import load_file

        vae.load_state_dict({k: v.float() for k, v in load_file(args.init).items()})
    vae.train()
    mean, std = latent_stats()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    warmup = args.warmup

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup))))

    started = time.monotonic()
    size = (args.crop, args.crop)
    for step in range(args.stop_at or args.steps):
        # 3. Cycle through 4 still frames (the first-frame path) and single clips (the 4x temporal path: 5 frames
        # reach the chunk after the first frame, 9 and more the chunks after a 4-frame chunk).
        frames = cycle[step % len(cycle)]
        if frames == 1:
            x = torch.cat([to_vae(camera_clip(photos[int(torch.randint(len(photos), (), generator=gen))], size, 1, gen))
                           for _ in range(4)])  # fmt: skip
        else:  # long clips at a smaller crop (about 9 x 64^2 pixels): their lesson is temporal, not spatial
            side = size[0] if frames <= 9 else max(32, 8 * round(size[0] * math.sqrt(9 / frames) / 8))
            x = to_vae(
                camera_clip(photos[int(torch.randint(len(photos), (), generator=gen))], (side, side), frames, gen)
            )
        if float(torch.rand((), generator=gen)) < 0.5:  # colour and brightness jitter: the photos are few
            x = (
                x * (0.8 + 0.4 * torch.rand(1, 3, 1, 1, 1, generator=gen))
                + 0.2 * torch.rand(1, 3, 1, 1, 1, generator=gen)
                - 0.1
            ).clamp(-1, 1)
        z = vae.encode(x)  # [B, 16, T', h, w]
        zn = (z - mean) / std
        # Latent statistics near the Wan21 format's (the DiT's noise is unit Gaussian after process_in).
        stat = (zn.mean(dim=(0, 2, 3, 4)) ** 2).mean() + ((zn.var(dim=(0, 2, 3, 4)) - 1) ** 2).mean()
        # Small latent noise so the decoder tolerates a DiT's imperfect latents.
        y = vae.decode(z + 0.05 * std * torch.randn(z.shape, generator=gen))
        rec = F.l1_loss(y, x) + F.mse_loss(y, x)
        loss = rec + 0.01 * stat
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            p = psnr((y.detach().clamp(-1, 1) + 1) / 2, (x + 1) / 2)
            # One batch's PSNR swings by 5 dB with the photo drawn (gravel vs sky); the held-out 17-frame clips
            # at a small size (a few seconds of CPU, no RNG drawn) are the trend to watch.
            ho = evaluate(vae, size=(64, 96)) if step % 200 == 0 else {}
            print(f"step {step}  loss {loss.item():.4f}  stat {stat.item():.3f}  train psnr {p:.2f}  "
                  + "".join(f"held-out {k} {v:.2f}  " for k, v in ho.items())
                  + f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
        if (step + 1) % 200 == 0 and step + 1 < args.steps:
            save_fp16(vae, VAE_FILE.with_suffix(".partial.safetensors"), {"step": step + 1})
    took = time.monotonic() - started
    ev = evaluate(vae)
    digest = save_fp16(vae, Path(args.out), {
        "recipe": "tiny.train_vae", "steps": args.steps, "stop_at": args.stop_at or args.steps, "lr": args.lr, "seed": args.seed, "train_s": round(took),
        "init": Path(args.init).name if args.init else "random"})  # fmt: skip
    print(f"trained in {took:.0f} s; held-out psnr " + ", ".join(f"{k} {v:.2f}" for k, v in ev.items()))
    print(f"sha256 {digest}  {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
