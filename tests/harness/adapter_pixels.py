"""The adapter-learns proof in pixels (issue 11). The pack's command line trainer trains an adapter on the
trained tiny DiT (harness/trained.py: the stand-in for an artist's Wan, so no base pre-training here, unlike
harness/proof.py) with clips cut from the training photographs; held-out clips are then upscaled 2x by the
shipped 2K workflow through the real server without and with the adapter (through its loader node), decoded
by the trained VAE and measured against the HR clip in pixels, and against its latent in latent space.

    cd tests && ../.venv/bin/python -m harness.adapter_pixels     # about 4 minutes on 2 cores; prints tables

Bicubic is reported, not beaten: the tiny VAE is the ceiling in pixels (the HR clip through it scores far
below bicubic), and its encoder keeps so little of what a 2x downscale loses that the bicubic clip's latent
is already within about 0.1 dB of the HR clip's in pixels (tests/tiny/README.md, Status). So the measures
that can show learning here are PSNR against the HR clip, PSNR against the HR clip through the VAE (what a
perfect latent would decode to) and latent PSNR, each against training-free sampling on the same base.
Dimension legend: N frames, H rows, W columns, 3 RGB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .paths import REPO, WORK
from .proof import run_trainer, validation_losses, write_mp4
from .shared import built_once
from .trained import install

ADAPTER_NAME = "patchvsr-proof-adapter-photo"


@dataclass(frozen=True)
class PixelProofConfig:
    clip_hw: tuple[int, int] = (128, 192)  # training clips (pixels); crops of `crop` are drawn from them
    frames: int = 5
    photo_scale: tuple[float, float] = (1.0, 2.0)  # photo pixels per clip pixel, drawn per clip
    clips_per_photo: int = 1  # one clip from each of the 12 training photographs
    inside: bool = True  # the camera stays inside the photo (tiny.photos.camera_clip); part of the cache key
    steps: int = 1000
    lr: float = 5e-4  # tiny models learn at rates a 1.3B model would not survive (paper: 1e-5)
    crop: tuple[int, int] = (128, 128)  # the trained DiT's native size (it was trained on 16x16-cell crops)
    # As harness/proof.py: exact LR clips, so the paper's 0.2-0.3 augmentation is not needed.
    cond_noise: tuple[float, float] = (0.0, 0.05)
    seed: int = 0
    # The held-out clips (photo, HR size): photos no model here was trained on, at the demo's detail density,
    # 128-pixel patches, 8 steps from t0 0.5 (as harness/proof.py: with an adapter more of the result may be
    # generated than the training-free default 0.3 allows).
    held_out: tuple[tuple[str, tuple[int, int]], ...] = (("coffee.png", (256, 384)), ("chelsea.png", (192, 288)))
    held_out_scale: float = 1.5
    sample_steps: int = 8
    t0: float = 0.5

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


RUNS = {
    "training-free": {"mode": "weighted"},
    "adapter": {"mode": "weighted", "adapter": f"{ADAPTER_NAME}.safetensors"},
}


def make_data(root: Path, cfg: PixelProofConfig) -> Path:
    """HR training clips (lossless mp4) from the training photographs, fixed seed; returns their folder."""
    from tiny.photos import TRAIN, camera_clip, load_photo, skimage_data

    folder = root / f"train-{cfg.key()}"
    gen = torch.Generator().manual_seed(cfg.seed)
    for name in TRAIN:
        photo = load_photo(skimage_data() / name)
        for k in range(cfg.clips_per_photo):
            lo, hi = cfg.photo_scale
            scale = lo + (hi - lo) * float(torch.rand((), generator=gen))
            # Drawn even when the file is cached, so every clip's draws stay the same.
            clip = camera_clip(photo, cfg.clip_hw, cfg.frames, gen, scale=scale, inside=cfg.inside)
            path = folder / f"{Path(name).stem}_{k}.mp4"
            if not path.exists():
                write_mp4(path, clip.permute(0, 2, 3, 1).numpy())
    return folder


def evaluate(server, cfg: PixelProofConfig) -> dict[str, dict[str, dict[str, float]]]:
    """clip -> label -> measures: pixel_eval.measures against the HR clip, plus `psnr_vae_hr` (pixels, against
    the HR clip through the VAE) and `latent_psnr` (against the HR clip's latent, peak = its range)."""
    from . import pixel_eval
    from .proof import psnr as latent_psnr

    out = {}
    for photo, hw in cfg.held_out:
        cmp = pixel_eval.CompareConfig(photo=photo, hr_hw=hw, photo_scale=cfg.held_out_scale, patch_px=cfg.crop[1],
                                       steps=cfg.sample_steps, t0=cfg.t0, seed=cfg.seed)  # fmt: skip
        latents: dict[str, torch.Tensor] = {}
        frames, _ = pixel_eval.run_compare(server, cmp, RUNS, latents=latents)
        scores = pixel_eval.measures(pixel_eval.plan_of(cmp), frames)
        for label, m in scores.items():
            m["psnr_vae_hr"] = pixel_eval.psnr(frames[label], frames["vae_hr"])
            if label in latents and label != "vae_hr":
                m["latent_psnr"] = latent_psnr(latents[label], latents["vae_hr"])
        out[f"{Path(cmp.photo).stem} {cmp.hr_hw[0]}x{cmp.hr_hw[1]}"] = scores
    return out


def table(scores: dict[str, dict[str, float]]) -> str:
    def cell(m, k, f):
        return format(m[k], f) if k in m else "-"

    lines = [
        "| result | PSNR (dB) | PSNR vs HR through the VAE | latent PSNR | gradient PSNR | sharpness | colour drift |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in ("bicubic", "vae_hr", "vae_bicubic", *RUNS):
        m = scores[label]
        lines.append(
            f"| {label} | {m['psnr']:.2f} | {cell(m, 'psnr_vae_hr', '.2f')} | {cell(m, 'latent_psnr', '.2f')} "
            f"| {m['grad_psnr']:.2f} | {m['sharpness']:.3f} | {m['drift']:.4f} |"
        )
    return "\n".join(lines)


def run_proof(server, models_dir: Path, work: Path, cfg: PixelProofConfig = PixelProofConfig(), log=print):
    """Data, adapter training, evaluation. Returns (clip -> label -> measures, validation losses)."""
    started = time.monotonic()
    trained = install(models_dir)
    data = make_data(work / "data", cfg)

    def build(folder: Path) -> None:
        stdout = run_trainer(
            trained["dit"], trained["vae"], data, folder / "adapter.safetensors", folder / "train", steps=cfg.steps,
            lr=cfg.lr, crop=cfg.crop, frames=cfg.frames, cond_noise=cfg.cond_noise, seed=cfg.seed,
        )  # fmt: skip
        (folder / "trainer.log").write_text(stdout)
        shutil.rmtree(folder / "train")  # checkpoints and latent cache: the adapter is what is reused

    # Trained once per checkout for every host (harness.shared).
    done = built_once("adapter-pixels", [cfg.key(), trained["dit"], trained["vae"], Path(__file__)], build)
    out = models_dir / "patchvsr" / f"{ADAPTER_NAME}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(done / "adapter.safetensors", out)
    stdout = (done / "trainer.log").read_text()
    vals = validation_losses(stdout)
    log(f"adapter ({cfg.steps} steps) ready at {time.monotonic() - started:.0f} s; validation loss "
        + ", ".join(f"{s}: {v:.4f}" for s, v in vals))  # fmt: skip
    scores = evaluate(server, cfg)
    for clip, s in scores.items():
        log(f"held-out {clip}, 2x, measured against the HR clip:\n{table(s)}")
    log(f"evaluated at {time.monotonic() - started:.0f} s")
    return scores, vals


def main(argv: list[str]) -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    from .server import ComfyServer
    from .tiny_models import ensure_in_subprocess

    sys.path.insert(0, str(REPO))  # the pack's pure-PyTorch `models` package (plans, for the measures)
    models = ensure_in_subprocess(WORK / "models")
    with ComfyServer(WORK / "adapter-pixels-server", models) as server:
        run_proof(server, models, WORK / "adapter-pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
