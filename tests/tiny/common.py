"""Shared by the tiny models' trainers: the host's classes, the file names and the fixed recipe."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "models"  # committed: CI never retrains
VAE_FILE = WEIGHTS / "vae" / "patchvsr-tiny-wan21-vae-photo.safetensors"
DIT_FILE = WEIGHTS / "diffusion_models" / "patchvsr-tiny-wan21-t2v-photo.safetensors"
VAE_DIM = 16  # the Wan 2.1 VAE at 1/6 of its width (96); latent layout unchanged: 16 ch, 4x8x8


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def wan_vae(dim: int = VAE_DIM):
    """ComfyUI's own Wan 2.1 VAE class, in the configuration its VAELoader builds for a file of this width."""
    from harness.inprocess import import_comfy

    import_comfy()
    import comfy.ldm.wan.vae

    return comfy.ldm.wan.vae.WanVAE(
        dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
        temperal_downsample=[False, True, True], dropout=0.0,
    )  # fmt: skip


def latent_stats() -> tuple[torch.Tensor, torch.Tensor]:
    """[1, 16, 1, 1, 1] mean and std of ComfyUI's Wan21 latent format: the trained VAE's latents are pulled
    towards them, so `process_in` makes them about unit Gaussian as the DiT's noise expects."""
    from harness.inprocess import import_comfy

    import_comfy()
    import comfy.latent_formats

    fmt = comfy.latent_formats.Wan21()
    return fmt.latents_mean.float(), fmt.latents_std.float()


def psnr(x: torch.Tensor, ref: torch.Tensor, peak: float = 1.0) -> float:
    mse = torch.mean((x.float() - ref.float()) ** 2).clamp_min(1e-12)
    return float(10 * torch.log10(peak**2 / mse))


def save_fp16(module: torch.nn.Module, path: Path, meta: dict) -> str:
    """Saves the weights in fp16 (ComfyUI's loaders cast them to the working dtype) and returns the sha256."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()}
    save_file(sd, str(path), metadata={k: str(v) for k, v in meta.items()})
    return sha256(path)
