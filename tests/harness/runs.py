"""Running the shipped workflows on the tiny models: the synthetic input clip and the test-size overrides
shared by the integration tests and the README's main-job command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .tiny_models import DISTILL_LORA_NAME, DIT, VAE
from .workflow import override, replace, to_api

# The file name of the clip the shipped workflows' Load Video names (the tests put their clip under it).
INPUT_CLIP = "patchvsr_example.mp4"


def make_clip(
    path: Path, width: int = 256, height: int = 144, frames: int = 9, fps: int = 16, levels=(0.0, 1.0)
) -> Path:
    """Writes a synthetic mp4 (moving colour bands and a bright square) with imageio-ffmpeg, its values
    mapped into `levels` (low, high)."""
    import imageio_ffmpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=fps, codec="libx264", quality=9, macro_block_size=1, pix_fmt_out="yuv444p"
    )
    writer.send(None)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(frames):
        r = 0.5 + 0.5 * np.sin(x / 9.0 + i * 0.4)
        g = 0.5 + 0.5 * np.sin(y / 7.0 - i * 0.3)
        b = 0.5 + 0.5 * np.sin((x + y) / 23.0)
        frame = np.stack([r, g, b], -1)
        s = 8 + 4 * i
        frame[20:44, s : s + 24] = 1.0
        frame = levels[0] + (levels[1] - levels[0]) * frame
        writer.send((frame * 255).astype(np.uint8).tobytes())
    writer.close()
    return path


def tiny_prompt(
    workflow: Path, object_info: dict, steps: int = 2, t2v_size: tuple[int, int, int] = (256, 144, 1)
) -> dict:
    """The shipped workflow as an API prompt, pointed at the tiny models with zero text conditioning and
    `steps` sampling steps. Nothing else of the file changes."""
    prompt = to_api(json.loads(Path(workflow).read_text()), object_info)
    prompt = override(prompt, "UNETLoader", unet_name=f"{DIT.name}.safetensors")
    prompt = override(prompt, "VAELoader", vae_name=f"{VAE.name}.safetensors")
    prompt = replace(prompt, object_info, "CLIPTextEncode", "PatchVSRTest_ZeroTextConditioning", tokens=8)
    kinds = {n["class_type"] for n in prompt.values()}
    for sampler in {"PatchVSR_Sampler", "PatchVSR_LongVideo"} & kinds:  # the long-video node samples itself
        prompt = override(prompt, sampler, steps=steps)
    if "EmptyHunyuanLatentVideo" in kinds:
        w, h, n = t2v_size
        prompt = override(prompt, "EmptyHunyuanLatentVideo", width=w, height=h, length=n)
        prompt = override(prompt, "KSampler", steps=steps)
    if "LoraLoaderModelOnly" in kinds:
        prompt = override(prompt, "LoraLoaderModelOnly", lora_name=f"{DISTILL_LORA_NAME}.safetensors")
    if "LoadVideo" in kinds:
        prompt = override(prompt, "LoadVideo", file=INPUT_CLIP)
    return prompt
