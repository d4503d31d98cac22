"""Pixel-space comparison on the trained tiny models (harness/trained.py): a held-out clip is downscaled 2x,
upscaled back by the shipped 2K workflow (target switched to `scale` 2 so an HR reference exists) once per
stitch mode in one prompt, and every result is decoded by the server and saved as PNG frames. Measured
against the HR clip: PSNR, seam score and colour drift in pixels, and an edge-sharpness ratio.

Shared by the demo (the side-by-side picture) and the integration tests (the pixel-space proofs).
Dimension legend: N frames, H rows, W columns, 3 RGB (frames are [N, H, W, 3] float in [0, 1]).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.plan import PatchPlan, PlanConfig, latent_frames, make_plan

from .fusion_proxies import seam_lines
from .paths import REPO
from .runs import tiny_prompt
from .trained import DIT_NAME, VAE_NAME
from .workflow import override, prune

STRIDE = 8  # Wan 2.1 VAE: pixels per latent cell
WORKFLOW = REPO / "workflows" / "patchvsr_2k_from_video.json"


@dataclass(frozen=True)
class CompareConfig:
    photo: str = "coffee.png"  # a held-out photograph (tests/assets/heldout)
    hr_hw: tuple[int, int] = (256, 384)  # HR clip size in pixels; the LR input is half of it
    # Photo pixels per HR pixel: 1.5 packs more detail into the HR clip than the photo's own softness
    # allows at 1 (bicubic from the 2x LR: 29.6 dB here, 34.7 dB at 1), so there is something to restore.
    photo_scale: float = 1.5
    frames: int = 5  # 1 + 4k pixel frames: 2 latent frames
    patch_px: int = 128  # the sampler's patch (the DiT was trained on 16x16-cell crops)
    steps: int = 4
    t0: float = 0.3  # the sampler's default: SDEdit from the bicubic latent
    seed: int = 0


def heldout_pair(cfg: CompareConfig) -> tuple[np.ndarray, np.ndarray]:
    """(HR, LR) [N, H, W, 3] clips: a fixed camera move over the held-out photograph, LR = 2x area average."""
    from tiny.photos import area_down, heldout_clip

    hr = heldout_clip(cfg.photo, cfg.hr_hw, cfg.frames, scale=cfg.photo_scale)
    return hr.permute(0, 2, 3, 1).numpy(), area_down(hr, 2).permute(0, 2, 3, 1).numpy()


def plan_of(cfg: CompareConfig) -> PatchPlan:
    """The partitioner's plan for this comparison (models/plan.py, as nodes/partition.py builds it)."""
    h, w = cfg.hr_hw
    p = cfg.patch_px // STRIDE
    return make_plan(PlanConfig((latent_frames(cfg.frames), h // STRIDE, w // STRIDE), (p, p), 21))


def compare_prompt(
    object_info: dict, lr_clip: str, hr_clip: str, cfg: CompareConfig, runs: dict[str, dict], latents: bool = False
) -> dict:
    """The shipped 2K workflow on the trained tiny models, one sampler + decode + SaveImage per entry of
    `runs` (label -> {"mode": stitch mode, "context": bool, "adapter": adapter file through the loader
    node}); the last entry also keeps the SaveVideo. Two references come along, decoded by the stock
    VAEDecode: `vae_bicubic`, the Upscale & Encode latent the sampler starts from (what t0 = 0 would give),
    and `vae_hr`, the HR clip through the VAE (the best any latent result can look with this VAE). With
    `latents`, every result's and reference's latent is saved as well (SaveLatent, same labels)."""
    prompt = tiny_prompt(WORKFLOW, object_info, steps=cfg.steps)
    prompt = override(prompt, "UNETLoader", unet_name=f"{DIT_NAME}.safetensors")
    prompt = override(prompt, "VAELoader", vae_name=f"{VAE_NAME}.safetensors")
    prompt = override(prompt, "LoadVideo", file=lr_clip)
    prompt = override(
        prompt, "PatchVSR_Partitioner", target="scale", scale=2.0, patch_width=cfg.patch_px, patch_height=cfg.patch_px
    )
    prompt = override(prompt, "PatchVSR_Sampler", cfg=1.0, t0=cfg.t0, seed=cfg.seed)
    ids = {n["class_type"]: k for k, n in prompt.items()}
    sampler, stitcher, decode = ids["PatchVSR_Sampler"], ids["PatchVSR_Stitcher"], ids["PatchVSR_Decode"]
    for k in [k for k, n in prompt.items() if n["class_type"] == "PreviewImage"]:
        del prompt[k]
    labels = list(runs)
    for i, label in enumerate(labels):
        run = runs[label]
        sid, st, dec = f"9{i}0", f"9{i}1", f"9{i}2"
        prompt[st] = json.loads(json.dumps(prompt[stitcher]))
        prompt[st]["inputs"]["mode"] = run["mode"]
        prompt[sid] = json.loads(json.dumps(prompt[sampler]))
        prompt[sid]["inputs"]["stitcher"] = [st, 0]
        if not run.get("context", True):
            prompt[sid]["inputs"].pop("context", None)
        if run.get("adapter"):
            prompt[f"9{i}5"] = {
                "class_type": "PatchVSR_AdapterLoader",
                "inputs": {"model": prompt[sampler]["inputs"]["model"], "adapter_name": run["adapter"]},
            }
            prompt[sid]["inputs"]["adapter"] = [f"9{i}5", 0]
        prompt[dec] = json.loads(json.dumps(prompt[decode]))
        prompt[dec]["inputs"]["samples"] = [sid, 0]
        prompt[f"9{i}3"] = {
            "class_type": "SaveImage",
            "inputs": {"images": [dec, 0], "filename_prefix": f"cmp/{label}"},
        }
    vae, upscale = ids["VAELoader"], ids["PatchVSR_UpscaleEncode"]
    prompt["980"] = {"class_type": "LoadVideo", "inputs": {"file": hr_clip}}
    prompt["981"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["980", 0]}}
    prompt["982"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["981", 0], "vae": [vae, 0]}}
    for nid, src, label in (("983", "982", "vae_hr"), ("985", upscale, "vae_bicubic")):
        prompt[nid] = {"class_type": "VAEDecode", "inputs": {"samples": [src, 0], "vae": [vae, 0]}}
        prompt[str(int(nid) + 1)] = {
            "class_type": "SaveImage",
            "inputs": {"images": [nid, 0], "filename_prefix": f"cmp/{label}"},
        }
    if latents:
        sources = {**{label: f"9{i}0" for i, label in enumerate(labels)}, "vae_hr": "982", "vae_bicubic": upscale}
        for j, (label, src) in enumerate(sources.items()):
            prompt[f"99{j}"] = {
                "class_type": "SaveLatent",
                "inputs": {"samples": [src, 0], "filename_prefix": f"cmp/{label}"},
            }
    # The shipped graph's own sampler/decode now feed only the video of the last run.
    video = ids["CreateVideo"]
    prompt[video]["inputs"]["images"] = [f"9{len(labels) - 1}2", 0]
    for k in (sampler, decode, stitcher):
        del prompt[k]
    return prune(prompt, object_info)


def run_compare(
    server, cfg: CompareConfig, runs: dict[str, dict], latents: dict[str, torch.Tensor] | None = None
) -> tuple[dict[str, np.ndarray], list[Path]]:
    """Runs the comparison; returns label -> [N, H, W, 3] frames (plus "hr", "lr", "bicubic") and the mp4s.
    A dict passed as `latents` is filled with label -> saved latent (the runs', "vae_hr", "vae_bicubic")."""
    from PIL import Image

    from .proof import write_mp4

    hr, lr = heldout_pair(cfg)
    name = f"heldout_{Path(cfg.photo).stem}"
    write_mp4(server.input_dir / f"{name}_lr.mp4", lr)
    write_mp4(server.input_dir / f"{name}_hr.mp4", hr)
    prompt = compare_prompt(server.object_info(), f"{name}_lr.mp4", f"{name}_hr.mp4", cfg, runs, latents is not None)
    result = server.run(prompt)
    if result.status != "success":
        raise RuntimeError(f"comparison run {result.status}: {json.dumps(result.error)[:3000]}")
    out: dict[str, np.ndarray] = {"hr": hr, "lr": lr, "bicubic": bicubic(lr, cfg.hr_hw)}
    pngs = sorted(result.files(server.output_dir, ".png"))
    for label in (*runs, "vae_bicubic", "vae_hr"):
        frames = [p for p in pngs if re.fullmatch(rf"{label}_\d+_\.png", p.name)]
        assert len(frames) == cfg.frames, f"{label}: {len(frames)} PNG frames, expected {cfg.frames}"
        out[label] = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for p in frames])
    if latents is not None:
        from safetensors.torch import load_file

        for p in result.files(server.output_dir, ".latent"):
            label = re.fullmatch(r"(.+)_\d+_\.latent", p.name)
            if label:
                latents[label.group(1)] = load_file(str(p))["latent_tensor"]
    return out, result.files(server.output_dir, ".mp4")


def bicubic(lr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """[N, h, w, 3] -> [N, H, W, 3]: plain bicubic interpolation, the baseline every upscaler must beat."""
    x = torch.from_numpy(lr).permute(0, 3, 1, 2)
    return F.interpolate(x, size=hw, mode="bicubic", align_corners=False).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def psnr(x: np.ndarray, ref: np.ndarray) -> float:
    """dB, peak 1 (frames in [0, 1])."""
    mse = float(np.mean((x.astype(np.float64) - ref) ** 2))
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def _grads(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    g = x.mean(axis=-1)  # luma-like: seams and edges are about brightness first
    return g[:, :, 1:] - g[:, :, :-1], g[:, 1:, :] - g[:, :-1, :]  # [N, H, W-1], [N, H-1, W]


def base_lines(plan: PatchPlan) -> tuple[list[int], list[int]]:
    """The base grid's interior borders (rows, columns): where naive tiles meet, so where their seams are."""
    return list(plan.row_edges[1:-1]), list(plan.col_edges[1:-1])


def seam_score(plan: PatchPlan, x: np.ndarray, lines: tuple[list[int], list[int]] | None = None) -> float:
    """Pixel version of fusion_proxies.seam_score: squared gradient across `lines` (default every line where
    any mode can leave a seam, fusion_proxies.seam_lines: the plan's base and bridging borders and the
    shifted grids') over the squared gradient elsewhere. 1 means the borders look like the rest of the frame."""
    gx, gy = _grads(x)
    W, H = gx.shape[2] + 1, gy.shape[1] + 1
    ys, xs = lines or seam_lines(plan)
    bx, by = np.zeros(W - 1, dtype=bool), np.zeros(H - 1, dtype=bool)
    bx[[e * STRIDE - 1 for e in xs if 0 < e * STRIDE < W]] = True
    by[[e * STRIDE - 1 for e in ys if 0 < e * STRIDE < H]] = True
    border = np.concatenate([(gx[:, :, bx] ** 2).ravel(), (gy[:, by, :] ** 2).ravel()]).mean()
    inner = np.concatenate([(gx[:, :, ~bx] ** 2).ravel(), (gy[:, ~by, :] ** 2).ravel()]).mean()
    return float(border / inner)


def colour_drift(plan: PatchPlan, x: np.ndarray, ref: np.ndarray) -> float:
    """Pixel version of fusion_proxies.colour_drift: spread (std) over the base patches of each patch's mean
    error per RGB channel, i.e. a tone that differs from patch to patch."""
    err = x.astype(np.float64) - ref
    means = [
        err[:, b.y0 * STRIDE : b.y1 * STRIDE, b.x0 * STRIDE : b.x1 * STRIDE].mean(axis=(0, 1, 2))
        for b in plan.base_boxes()
    ]
    return float(np.stack(means).std(axis=0).mean())


def sharpness(x: np.ndarray, ref: np.ndarray) -> float:
    """Edge sharpness against the reference: mean gradient magnitude over the reference's (1 = as sharp as
    HR, bicubic is below 1; above 1 means invented edges or noise)."""
    gx, gy = _grads(x)
    rx, ry = _grads(ref)
    return float((np.abs(gx).mean() + np.abs(gy).mean()) / (np.abs(rx).mean() + np.abs(ry).mean()))


def gradient_psnr(x: np.ndarray, ref: np.ndarray) -> float:
    """PSNR of the gradient maps (dB, peak 1): are the edges where the HR clip has them, as strong?"""
    gx, gy = _grads(x)
    rx, ry = _grads(ref)
    mse = (np.mean((gx - rx) ** 2) + np.mean((gy - ry) ** 2)) / 2
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def measures(plan: PatchPlan, frames: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """label -> PSNR, gradient PSNR, sharpness, seam score and colour drift against frames["hr"]."""
    hr = frames["hr"]
    return {
        k: {
            "psnr": psnr(v, hr),
            "grad_psnr": gradient_psnr(v, hr),
            "sharpness": sharpness(v, hr),
            "seam": seam_score(plan, v),
            "seam_base": seam_score(plan, v, base_lines(plan)),
            "drift": colour_drift(plan, v, hr),
        }
        for k, v in frames.items()
        if k != "lr"
    }


def table(m: dict[str, dict[str, float]]) -> str:
    lines = [
        "| result | PSNR (dB) | gradient PSNR (dB) | sharpness | seam score | seam, base borders | colour drift |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, v in m.items():
        lines.append(
            f"| {k} | {v['psnr']:.2f} | {v['grad_psnr']:.2f} | {v['sharpness']:.3f} | {v['seam']:.3f} | {v['seam_base']:.3f} | {v['drift']:.4f} |"
        )
    return "\n".join(lines)
