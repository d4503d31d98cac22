"""What the nodes need from ComfyUI: model families, VAE checks, progress bars and interrupts.

Only public ComfyUI objects are read here; nothing is changed, except the host's own training flag for the
duration of a training run (see `training_mode`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import comfy.ldm.wan.model
import comfy.model_management
import comfy.model_patcher
import comfy.utils
import torch

from ..models.memory import host_estimate
from ..models.plan import VAE_TIME_STRIDE


@dataclass(frozen=True)
class Family:
    name: str
    latent_channels: int
    spatial_stride: int  # pixels per latent cell
    native_hw: tuple[int, int]  # the size the base model was trained at, in pixels (h, w)
    native_frames: int  # pixel frames the base model generates at once


# Keyed by latent channels, the one thing that tells the Wan families apart at the model's input.
FAMILIES = {
    16: Family("wan2.1", 16, 8, (480, 832), 81),  # Wan 2.1 T2V 1.3B/14B and Wan 2.2 A14B share this latent
    48: Family("wan2.2-ti2v-5b", 48, 16, (704, 1280), 121),
}


def model_family(model) -> Family:
    """The Wan family of a MODEL, or a ValueError that says what was connected instead."""
    dm = getattr(getattr(model, "model", None), "diffusion_model", None)
    if type(dm) is not comfy.ldm.wan.model.WanModel:
        raise ValueError(
            f"model: PatchVSR needs a Wan 2.1 / 2.2 text-to-video diffusion model, got {type(dm).__name__}. "
            "Load a Wan T2V model (e.g. wan2.1_t2v_1.3B) with 'Load Diffusion Model' and connect it."
        )
    if dm.model_type != "t2v" or dm.in_dim != dm.out_dim:
        raise ValueError(
            f"model: this Wan model takes {dm.in_dim} input channels ({dm.model_type}); image-to-video and "
            "control variants need per-patch image conditions PatchVSR does not build. Connect a Wan T2V model."
        )
    channels = model.model.latent_format.latent_channels
    if channels not in FAMILIES:
        raise ValueError(f"model: Wan model with {channels} latent channels is not supported (16 or 48).")
    return FAMILIES[channels]


def compute_dtype(model) -> torch.dtype:
    """The dtype the host runs the DiT in: its manual-cast dtype when the weights are stored in another
    (fp8, or a dtype the device cannot compute in), else the weights' own."""
    return model.model.manual_cast_dtype or model.model.get_dtype()


def memory_estimate(model):
    """shape -> bytes: ComfyUI's memory estimate for a model input of that shape, as this host's sampler
    computes it (through comfy.model_patcher.call_model_memory_required and the model's attention-memory
    option where the host has them)."""
    helper = getattr(comfy.model_patcher, "call_model_memory_required", None)
    return host_estimate(model.model, model.model_options, helper)


def real_weight(layer: torch.nn.Module, name: str) -> torch.Tensor:
    """A layer's parameter as real numbers. Layers that store weights scaled (legacy scaled fp8) or as
    quantized tensors (ComfyUI 0.33) carry `convert_weight`, the hook the host's own LoRA patching uses
    to read them; other layers store plain tensors."""
    tensor = getattr(layer, name)
    convert = getattr(layer, "convert_weight", None)
    if name == "weight" and convert is not None:
        return convert(tensor.detach(), inplace=False)
    return tensor


def check_vae(vae, family: Family, name: str = "vae") -> None:
    """Raises unless `vae` encodes to the latent space of `family`."""
    channels = getattr(vae, "latent_channels", None)
    stride = vae.spacial_compression_encode() if hasattr(vae, "spacial_compression_encode") else None
    if channels != family.latent_channels or stride != family.spatial_stride:
        raise ValueError(
            f"{name}: this VAE makes {channels}-channel latents at 1/{stride} size, but the plan's model "
            f"({family.name}) needs {family.latent_channels} channels at 1/{family.spatial_stride}. "
            "Connect the VAE that belongs to the Wan model (Wan 2.1 VAE for 16 channels, Wan 2.2 VAE for 48)."
        )


def check_frames(n: int, name: str) -> None:
    if n < 1 or (n - 1) % VAE_TIME_STRIDE:
        lo = (n - 1) // VAE_TIME_STRIDE * VAE_TIME_STRIDE + 1
        raise ValueError(
            f"{name}: {n} frames; Wan's VAE needs 1 + 4k frames. Trim the clip to {lo} or extend it to "
            f"{lo + VAE_TIME_STRIDE} frames (e.g. with the frame_load_cap / select_every_nth of your loader)."
        )


def as_rgb(images: torch.Tensor, name: str) -> torch.Tensor:
    """[N, H, W, C] IMAGE frames as RGB: alpha dropped (Wan's VAE has no alpha), grey repeated to 3 channels."""
    if images.ndim != 4 or images.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"{name}: expected IMAGE frames [N, H, W, 3] (grey, RGB or RGBA), got shape {list(images.shape)}. "
            "Connect the frames of a video loader (Get Video Components, Load Video)."
        )
    c = images.shape[-1]
    if c == 3:
        return images
    if c == 4:
        return images[..., :3]
    return images[..., :1].expand(*images.shape[:3], 3)  # grey, or grey + alpha


def check_finite(x: torch.Tensor, name: str) -> None:
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name}: {bad} values are NaN or infinite; check the node that produced it.")


def is_oom(e: BaseException) -> bool:
    """Whether `e` is the device running out of memory: torch's error, or whatever the host's own test counts
    (0.33 adds accelerator errors that say so). Never a cancel, which is not a RuntimeError."""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    test = getattr(comfy.model_management, "is_oom", None)
    return test is not None and isinstance(e, RuntimeError) and test(e)


class Progress:
    """A ComfyUI progress bar that also checks for cancel at every tick."""

    def __init__(self, total: int):
        self.total = max(1, total)
        self.done = 0
        self.bar = comfy.utils.ProgressBar(self.total)

    def check(self) -> None:
        # Cancel from the UI raises here; never catch it (it is an Exception on older hosts).
        comfy.model_management.throw_exception_if_processing_interrupted()

    def tick(self, n: int = 1, ceiling: int | None = None) -> None:
        self.done = min(self.done + n, ceiling if ceiling is not None else self.total)
        self.bar.update_absolute(self.done, self.total)

    def set(self, value: int, total: int | None = None, preview=None) -> None:
        """`preview`: a latent preview image as ComfyUI's previewers make it, sent with the progress."""
        self.total = max(1, total) if total is not None else self.total
        self.done = min(value, self.total)
        self.bar.update_absolute(self.done, self.total, preview)


def vae_encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """pixels: [N, H, W, 3] in [0, 1] -> [1, C, T, h, w] raw VAE latent (ComfyUI's own encode)."""
    return vae.encode(pixels[..., :3])


@contextmanager
def training_mode():
    """Autograd through the host's DiT for the length of the block. ComfyUI 0.33 runs RoPE (and other ops)
    through comfy-kitchen kernels that have no backward unless `comfy.model_management.in_training` is
    set, the flag its own LoRA trainer sets around its loop (comfy_extras/nodes_train.py); the flag is put
    back afterwards, so sampling keeps the fast kernels. Older hosts have no such flag and need nothing.
    (tests/harness/inprocess.py keeps a copy for in-process training, which cannot import the pack.)"""
    mm = comfy.model_management
    if not hasattr(mm, "in_training"):
        yield
        return
    saved, mm.in_training = mm.in_training, True
    try:
        yield
    finally:
        mm.in_training = saved
