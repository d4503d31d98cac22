"""Proof that a trained adapter learns: train one on a small procedural video set with the command line
trainer, then upscale held-out clips 2x in the real ComfyUI server three ways (bicubic, training-free
PatchVSR, PatchVSR with the adapter through its loader node) and compare each with the HR clip.

    cd tests && ../.venv/bin/python -m harness.proof      # about 4 minutes on 2 cores; prints the table

The data: moving flat-coloured rectangles over a background, every surface carrying a fine 1-pixel
checker texture. Downscaling by 2 erases the texture, bicubic cannot bring it back, and a model that has
learned the domain can: the setting where super-resolution beats interpolation.

Two stand-ins, both forced by having only tiny random models here:
- The base. A real Wan is a trained denoiser of real video; a random tiny DiT is not a denoiser of
  anything, and an adapter on top of it cannot learn within CI's time (measured: it only learned to output
  zero). So the tiny DiT is first trained as an unconditional denoiser of the HR clips' latents
  (BASE_STEPS), the tiny stand-in for Wan's pre-training; training-free PatchVSR runs on that same base.
- The measure. The tiny VAE has random weights, so it is not an autoencoder and pixels decoded from any
  latent (even the HR clip's own) say nothing. PSNR is measured in the VAE's latent space against the HR
  clip's latent (encoded by the same server), peak = that latent's range. Bicubic is the latent of the
  bicubic-upscaled clip, i.e. Upscale & Encode's output, which the sampler starts from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .paths import REPO, WORK, comfy_root, host_python
from .shared import built_once
from .tiny_models import DIT, VAE


@dataclass(frozen=True)
class ProofConfig:
    hr_hw: tuple[int, int] = (64, 96)  # HR clip size (pixels); the LR input is half of it
    frames: int = 5
    texture: float = 0.45  # checker amplitude on every surface
    train_clips: int = 16
    held_out: int = 3
    base_steps: int = 3000  # the base's pre-training (unconditional denoising of HR latents)
    base_lr: float = 1e-3
    adapter_steps: int = 2000
    adapter_lr: float = 5e-4  # tiny models learn at rates a 1.3B model would not survive (paper: 1e-5)
    # Patch-condition noise augmentation. The paper's 0.2-0.3 buys robustness to real-world degradations;
    # these LR clips are exact, and at 0.2-0.3 the tiny adapter did not beat training-free (measured).
    cond_noise: tuple[float, float] = (0.0, 0.05)
    crop: tuple[int, int] = (48, 64)  # training crop = the sampler's patch size (the "native" size here)
    sample_steps: int = 8
    t0: float = 0.5  # above the sampler's default 0.3: with an adapter more of the result may be generated
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


BASE_NAME = "patchvsr-tiny-wan21-t2v-pretrained"
ADAPTER_NAME = "patchvsr-proof-adapter"


def textured_clip(seed: int, cfg: ProofConfig) -> np.ndarray:
    """[N, H, W, 3] float in [0, 1]: moving rectangles, all surfaces with a fixed-phase 1-px checker."""
    h, w = cfg.hr_hw
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    checker = np.where((x + y) % 2 == 0, 1.0, -1.0)[None, ..., None]
    frames = np.tile(r.uniform(0.2, 0.8, 3), (cfg.frames, h, w, 1))
    for _ in range(5):
        c = r.uniform(0.2, 0.8, 3)
        y0, x0 = r.integers(0, h - 8), r.integers(0, w - 8)
        hh, ww = r.integers(12, 32), r.integers(12, 40)
        dy, dx = r.integers(-2, 3), r.integers(-2, 3)
        for i in range(cfg.frames):
            top, left = y0 + dy * i, x0 + dx * i
            frames[i, max(0, top) : top + hh, max(0, left) : left + ww] = c
    return np.clip(frames + cfg.texture * checker, 0, 1).astype(np.float32)


def downscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Area-average down by an integer factor (what a camera's larger pixels would record)."""
    n, h, w, c = frames.shape
    return frames.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def write_mp4(path: Path, frames: np.ndarray, fps: int = 16) -> Path:
    """Lossless H.264 (qp 0, 4:4:4) so the codec does not erase the texture the test is about."""
    import imageio_ffmpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    n, h, w, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=fps, codec="libx264", macro_block_size=1, pix_fmt_out="yuv444p",
        output_params=["-qp", "0"],
    )  # fmt: skip
    writer.send(None)
    for f in frames:
        writer.send(np.round(f * 255).astype(np.uint8).tobytes())
    writer.close()
    return path


def make_data(root: Path, cfg: ProofConfig) -> tuple[Path, list[tuple[str, Path, Path]]]:
    """Training clips (HR) in root/train; held-out clips as (name, HR mp4, LR mp4), other seeds."""
    train = root / "train"
    for i in range(cfg.train_clips):
        if not (train / f"clip{i:02d}.mp4").exists():
            write_mp4(train / f"clip{i:02d}.mp4", textured_clip(cfg.seed * 1000 + i, cfg))
    held = []
    for j in range(cfg.held_out):
        hr = textured_clip(cfg.seed * 1000 + 500 + j, cfg)
        name = f"heldout{j}"
        held.append(
            (name, write_mp4(root / f"{name}_hr.mp4", hr), write_mp4(root / f"{name}_lr.mp4", downscale(hr, 2)))
        )
    return train, held


def pretrain_base(out: Path, vae_path: Path, dit_path: Path, train_dir: Path, cfg: ProofConfig) -> Path:
    """Trains the tiny DiT (random weights from `dit_path`) as an unconditional rectified-flow denoiser of
    the training clips' HR latents and saves it to `out`."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file, save_file

    from models.data import find_clips, read_clip
    from models.flow import noise_to

    from .inprocess import import_comfy, tiny_wan, training_mode

    import_comfy()
    import comfy.latent_formats
    import comfy.sd
    import comfy.utils

    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(vae_path)))
    fmt = comfy.latent_formats.Wan21()
    with torch.no_grad():
        latents = [fmt.process_in(vae.encode(read_clip(c, cfg.frames))).float().clone() for c in find_clips(train_dir)]
    dm = tiny_wan(dim=DIT.dim, layers=DIT.num_layers, ffn=DIT.ffn_dim, seed=DIT.seed)
    dm.load_state_dict(load_file(str(dit_path)))
    dm.train().requires_grad_(True)
    opt = torch.optim.AdamW(dm.parameters(), lr=cfg.base_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    context = torch.zeros(1, 1, 4096)  # the null prompt, as the test graphs' zero conditioning
    with training_mode():  # autograd through the host's DiT, as the trainer node does
        for _ in range(cfg.base_steps):
            z0 = latents[int(torch.randint(0, len(latents), (), generator=gen))]
            t = torch.rand((1,), generator=gen).clamp(1e-3, 1 - 1e-3)
            eps = torch.randn(z0.shape, generator=gen)
            loss = F.mse_loss(dm(noise_to(z0, t.item(), eps), t * 1000, context), eps - z0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(dm.parameters(), 1.0)
            opt.step()
    sd = {k: v.detach().float().contiguous() for k, v in dm.state_dict().items()}
    save_file(sd, str(out))
    return out


def run_trainer(model: Path, vae: Path, data: Path, out: Path, work: Path, *, steps: int, lr: float, crop, frames: int,
                cond_noise, seed: int, rank: int = 8) -> str:  # fmt: skip
    """The command line trainer at scale 2, as a studio would run it; returns its output."""
    cmd = [
        host_python(), str(REPO / "tools" / "train_adapter.py"), "--comfyui", str(comfy_root()), "--model", str(model),
        "--vae", str(vae), "--data", str(data), "--out", str(out), "--work", str(work), "--steps", str(steps),
        "--lr", str(lr), "--lora-rank", str(rank), "--crop", str(crop[0]), str(crop[1]), "--max-frames", str(frames),
        "--scale", "2", "2", "--cond-noise", *map(str, cond_noise), "--val-every", "250", "--ckpt-every", "500",
        "--seed", str(seed),
        "--overwrite",  # a rerun replaces the adapter (a matching checkpoint is resumed)
        # fp32: on this CPU bf16 trains about 2x slower (no bf16 matrix units); what the proofs show does not
        # depend on it, and test_each_precision_trains_like_fp32 shows bf16 trains like fp32.
        "--precision", "fp32",
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if run.returncode != 0:
        raise RuntimeError(f"the trainer failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}")
    return run.stdout


def trained(models_dir: Path, train_dir: Path, cfg: ProofConfig) -> str:
    """The proof's pre-trained base and adapter, trained once per checkout for every host (harness.shared),
    copied into this host's models folder; returns the trainer's output."""
    vae = models_dir / "vae" / f"{VAE.name}.safetensors"
    dit = models_dir / "diffusion_models" / f"{DIT.name}.safetensors"

    def build(folder: Path) -> None:
        base = pretrain_base(folder / "base.safetensors", vae, dit, train_dir, cfg)
        stdout = run_trainer(
            base, vae, train_dir, folder / "adapter.safetensors", folder / "train", steps=cfg.adapter_steps,
            lr=cfg.adapter_lr, crop=cfg.crop, frames=cfg.frames, cond_noise=cfg.cond_noise, seed=cfg.seed,
        )  # fmt: skip
        (folder / "trainer.log").write_text(stdout)
        shutil.rmtree(folder / "train")  # checkpoints and latent cache: the adapter is what is reused

    done = built_once("proof", [cfg.key(), vae, dit, REPO / "tests" / "harness" / "proof.py"], build)
    for name, dest in (("base", f"diffusion_models/{BASE_NAME}"), ("adapter", f"patchvsr/{ADAPTER_NAME}")):
        target = models_dir / f"{dest}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(done / f"{name}.safetensors", target)
    return (done / "trainer.log").read_text()


def proof_prompt(object_info: dict, lr_clip: str, hr_clip: str, cfg: ProofConfig) -> dict:
    """The shipped 2K workflow turned into the 2x comparison: one upscale & encode and global context feed
    two samplers (without and with the adapter); the bicubic latent, both results and the HR clip's latent
    are saved."""
    from .runs import tiny_prompt
    from .workflow import override, prune

    prompt = tiny_prompt(REPO / "workflows" / "patchvsr_2k_from_video.json", object_info, steps=cfg.sample_steps)
    prompt = override(prompt, "UNETLoader", unet_name=f"{BASE_NAME}.safetensors")
    prompt = override(prompt, "LoadVideo", file=lr_clip)
    prompt = override(
        prompt, "PatchVSR_Partitioner", target="scale", scale=2.0, patch_width=cfg.crop[1], patch_height=cfg.crop[0]
    )
    prompt = override(prompt, "PatchVSR_Sampler", cfg=1.0, t0=cfg.t0, seed=cfg.seed)
    ids = {n["class_type"]: k for k, n in prompt.items()}
    sampler, vae, upscale = ids["PatchVSR_Sampler"], ids["VAELoader"], ids["PatchVSR_UpscaleEncode"]
    for k in [k for k, n in prompt.items() if n["class_type"] in ("PatchVSR_Decode", "SaveVideo", "PreviewImage")]:
        del prompt[k]

    def save(src: str, name: str) -> dict:
        return {"class_type": "SaveLatent", "inputs": {"samples": [src, 0], "filename_prefix": f"proof/{name}"}}

    prompt["900"] = {"class_type": "PatchVSR_AdapterLoader", "inputs": {"model": prompt[sampler]["inputs"]["model"],
                                                                        "adapter_name": f"{ADAPTER_NAME}.safetensors"}}  # fmt: skip
    prompt["901"] = json.loads(json.dumps(prompt[sampler]))
    prompt["901"]["inputs"]["adapter"] = ["900", 0]
    prompt["910"] = {"class_type": "LoadVideo", "inputs": {"file": hr_clip}}
    prompt["911"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["910", 0]}}
    prompt["912"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["911", 0], "vae": [vae, 0]}}
    prompt["920"] = save(upscale, "bicubic")
    prompt["921"] = save(sampler, "free")
    prompt["922"] = save("901", "adapter")
    prompt["923"] = save("912", "hr")
    return prune(prompt, object_info)


def psnr(x, ref) -> float:
    """dB, peak = the reference's range."""
    import torch

    mse = torch.mean((x.float() - ref.float()) ** 2)
    return float(10 * torch.log10((ref.max() - ref.min()) ** 2 / mse))


def evaluate(server, held: list[tuple[str, Path, Path]], cfg: ProofConfig) -> dict[str, list[float]]:
    """PSNR per held-out clip of bicubic, training-free and adapter results against the HR latent."""
    from safetensors.torch import load_file

    info = server.object_info()
    scores: dict[str, list[float]] = {"bicubic": [], "training-free": [], "adapter": []}
    for name, hr, lr in held:
        for src in (hr, lr):
            shutil.copy2(src, server.input_dir / src.name)
        result = server.run(proof_prompt(info, lr.name, hr.name, cfg))
        if result.status != "success":
            raise RuntimeError(f"{name}: {result.status}: {json.dumps(result.error)[:3000]}")
        got = {
            p.name.split("_")[0]: load_file(str(p))["latent_tensor"] for p in result.files(server.output_dir, ".latent")
        }
        ref = got["hr"]
        for label, key in (("bicubic", "bicubic"), ("training-free", "free"), ("adapter", "adapter")):
            assert got[key].shape == ref.shape, f"{name}: {key} latent {list(got[key].shape)} vs HR {list(ref.shape)}"
            scores[label].append(psnr(got[key], ref))
    return scores


def table(scores: dict[str, list[float]], held: list) -> str:
    names = [h[0] for h in held]
    lines = ["| method | " + " | ".join(names) + " | mean |", "|---" * (len(names) + 2) + "|"]
    for label, vals in scores.items():
        cells = " | ".join(f"{v:.2f}" for v in vals)
        lines.append(f"| {label} | {cells} | {sum(vals) / len(vals):.2f} |")
    return "\n".join(lines)


def validation_losses(trainer_stdout: str) -> list[tuple[int, float]]:
    """(step, loss) from the trainer's `step N  validation loss X` lines."""
    out = []
    for line in trainer_stdout.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] == "step" and parts[2] == "validation":
            out.append((int(parts[1]), float(parts[4])))
    return out


def run_proof(server, models_dir: Path, work: Path, cfg: ProofConfig = ProofConfig(), log=print):
    """Everything: data, base pre-training, adapter training, evaluation. Returns (scores, val losses)."""
    started = time.monotonic()
    train_dir, held = make_data(work / "data", cfg)
    stdout = trained(models_dir, train_dir, cfg)
    vals = validation_losses(stdout)
    log(f"base ({cfg.base_steps} steps) and adapter ({cfg.adapter_steps} steps) ready at "
        f"{time.monotonic() - started:.0f} s; validation loss " + ", ".join(f"{s}: {v:.4f}" for s, v in vals))  # fmt: skip
    scores = evaluate(server, held, cfg)
    log(
        f"latent PSNR (dB) against the HR clip, 2x, {cfg.sample_steps} steps from t0 = {cfg.t0}:\n{table(scores, held)}"
    )
    return scores, vals


def main(argv: list[str]) -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    from .server import ComfyServer
    from .tiny_models import ensure_in_subprocess

    sys.path.insert(0, str(REPO))  # the pack's pure-PyTorch `models` package
    models = ensure_in_subprocess(WORK / "models")
    with ComfyServer(WORK / "proof-server", models) as server:
        scores, _ = run_proof(server, models, WORK / "proof")
    mean = {k: sum(v) / len(v) for k, v in scores.items()}
    ok = mean["adapter"] > mean["training-free"] and mean["adapter"] > mean["bicubic"]
    print("the adapter beats both" if ok else "the adapter does NOT beat both")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
