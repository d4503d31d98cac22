"""Upscale & encode (bicubic per frame, tiled VAE encode) and the tiled VAE decode."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..models.video import encode_upscaled_tiled, resize_latent
from .host import FAMILIES, Progress, as_rgb, check_finite, check_vae, vae_encode
from .sockets import CATEGORY, PatchPlanType
from .validate import widget_errors


def check_lr_input(plan, images, latent) -> torch.Tensor | None:
    """The video given here must be the one the plan was made from; returns the frames as RGB (or None)."""
    g = plan.geometry
    if (images is None) == (latent is None):
        raise ValueError("images / latent: connect exactly one, the same video that went into the partitioner.")
    if images is not None:
        images = as_rgb(images, "images")
        got = (images.shape[0], images.shape[1], images.shape[2])
        want = (g.frames, *g.lr_hw)
        if got != want:
            raise ValueError(
                f"images: {got[2]}x{got[1]} with {got[0]} frames, but the plan was made for {want[2]}x{want[1]} "
                f"with {want[0]} frames. Connect the same video to the partitioner and to this node."
            )
        check_finite(images, "images")
    else:
        x = latent["samples"]
        s = g.spatial_stride
        want = [1, g.latent_channels, (g.frames - 1) // 4 + 1, g.lr_hw[0] // s, g.lr_hw[1] // s]
        if list(x.shape) != want:
            raise ValueError(
                f"latent: shape {list(x.shape)}, but the plan was made for {want}. Connect the same latent to the partitioner."
            )
        check_finite(x, "latent")
    return images


def decode_frames(vae, latent: torch.Tensor) -> torch.Tensor:
    """[1, C, T, h, w] -> [N, H, W, 3] pixel frames (ComfyUI's own decode)."""
    images = vae.decode(latent)
    return images.reshape(-1, *images.shape[-3:]) if images.ndim == 5 else images


def encode_upscaled(plan, vae, frames: torch.Tensor, tile_px: int, progress: Progress | None = None) -> torch.Tensor:
    """frames: [N, h, w, 3] LR RGB -> [1, C, T, H, W] raw VAE latent of their bicubic upscale to the plan's
    target, encoded tile by tile (the upscaled video is never held whole). Cancel is checked per tile."""
    g = plan.geometry
    s = g.spatial_stride
    progress = progress if progress is not None else Progress(1)
    start = progress.done

    def on_tile(done, total):
        progress.set(start + done, max(progress.total, start + total))
        progress.check()

    tile = max(2, tile_px // s)
    return encode_upscaled_tiled(frames, g.target_hw, s, lambda p: vae_encode(vae, p), tile, max(1, tile // 8), on_tile)


class UpscaleEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSR_UpscaleEncode",
            display_name="PatchVSR Upscale & Encode",
            category=CATEGORY,
            description="Bicubic-upscales the LR video to the plan's target size and VAE-encodes it tile by tile, "
            "so memory is bounded by the tile at 2K and 4K. The result is the start latent of the sampler.",
            inputs=[
                PatchPlanType.Input("plan", tooltip="The plan from PatchVSR Patch Partitioner; sets the target size."),
                io.Vae.Input("vae", tooltip="The Wan VAE of the model family in the plan."),
                io.Image.Input(
                    "images", optional=True, tooltip="The LR frames, the same ones given to the partitioner."
                ),
                io.Latent.Input(
                    "latent",
                    optional=True,
                    tooltip="Or the LR latent from a Wan T2V sampler, the same one given to the partitioner.",
                ),
                io.Combo.Input(
                    "latent_mode",
                    options=["decode-resize-encode", "latent bicubic"],
                    default="decode-resize-encode",
                    tooltip="For a latent input: decode, upscale the pixels and re-encode (exact), or resize the latent directly (fast, softer).",
                ),
                io.Int.Input(
                    "tile_px",
                    default=512,
                    min=64,
                    max=4096,
                    step=16,
                    tooltip="Encode tile size in output pixels; smaller uses less memory.",
                ),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip="The upscaled video's latent at the target size.")
            ],
        )

    @classmethod
    def validate_inputs(cls, latent_mode=None):
        return widget_errors(cls, latent_mode=latent_mode)

    @classmethod
    def execute(cls, plan, vae, latent_mode, tile_px, images=None, latent=None) -> io.NodeOutput:
        check_vae(vae, FAMILIES[plan.geometry.latent_channels])
        images = check_lr_input(plan, images, latent)
        if latent is not None and latent_mode == "latent bicubic":
            # Fast path: resize the latent itself; no VAE round trip, softer than re-encoding pixels.
            return io.NodeOutput({"samples": resize_latent(latent["samples"], plan.latent_shape[1:])})
        frames = images if images is not None else decode_frames(vae, latent["samples"])
        return io.NodeOutput({"samples": encode_upscaled(plan, vae, frames, tile_px)})


@dataclass(frozen=True)
class DecodeTiles:
    """The tiled decode's widgets, by their input names (pixels and pixel frames)."""

    tile_px: int = 512
    overlap_px: int = 64
    temporal_frames: int = 64
    temporal_overlap: int = 8


def decode_stream(vae, x: torch.Tensor, tiles: DecodeTiles, emit: Callable[[torch.Tensor], None]) -> None:
    """x: [B, C, T, h, w] latent -> emit(frames [n, H, W, 3]) with the decoded frames in order (row by row),
    one temporal slice at a time, or a ValueError naming the input. ComfyUI's tiled decode runs on slices of
    `temporal_frames` frames (its spatial tiles inside each); consecutive slices share `temporal_overlap`
    frames and cross-fade over them, and a slice's frames are handed on as soon as the next slice no longer
    needs them. Memory holds one slice's frames and ComfyUI's buffers for it, not the clip's (its tiled
    decode keeps several full-size copies of what it decodes). The decode node and the long-video path
    decode here.

    Slices start on whole latent frames: a slice from latent frame a decodes its first latent frame (a
    causal VAE's start) to one frame, placed where ComfyUI's own temporal tiling places it (frame 4a for
    Wan), and every later latent frame to the frames it covers in the whole clip."""
    if x.ndim != 5:
        raise ValueError(f"samples: expected a video latent [B, C, T, H, W], got shape {list(x.shape)}.")
    if x.shape[1] != vae.latent_channels:
        raise ValueError(
            f"samples: {x.shape[1]} channels, but this VAE decodes {vae.latent_channels}. Connect the VAE of the sampler's model."
        )
    check_tiles(tiles)
    check_finite(x, "samples")
    s, ts = vae.spacial_compression_decode(), vae.temporal_compression_decode() or 1
    span = max(2, tiles.temporal_frames // ts)  # latent frames per slice
    shared = min(max(1, tiles.temporal_overlap // ts), span - 1)
    spatial = {"tile_x": max(2, tiles.tile_px // s), "tile_y": max(2, tiles.tile_px // s),
               "overlap": max(1, tiles.overlap_px // s)}  # fmt: skip
    for row in x.split(1):
        frames_total = row.shape[2]
        held = None  # the last slice's frames the next slice decodes again, to cross-fade into
        a = 0
        while True:
            b = min(a + span, frames_total)
            frames = vae.decode_tiled(row[:, :, a:b], **spatial, tile_t=max(2, b - a), overlap_t=shared)
            frames = frames.reshape(-1, *frames.shape[-3:])
            if held is not None:
                m = held.shape[0]
                w = ((torch.arange(m, dtype=torch.float32) + 1) / (m + 1)).view(-1, 1, 1, 1).to(frames)
                frames[:m] = held * (1 - w) + frames[:m] * w
            if b >= frames_total:
                emit(frames)
                break
            nxt = b - shared
            keep = (nxt - a) * ts  # this slice's frames before the next slice's first one
            emit(frames[:keep])
            held = frames[keep:].clone()  # a copy: the slice itself is let go
            del frames
            a = nxt


def decode_frames_tiled(vae, x: torch.Tensor, tiles: DecodeTiles) -> torch.Tensor:
    """x: [B, C, T, h, w] latent -> [N, H, W, 3] all its frames (decode_stream, gathered)."""
    parts: list[torch.Tensor] = []
    decode_stream(vae, x, tiles, parts.append)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def check_tiles(tiles: DecodeTiles, prefix: str = "") -> None:
    """Raises unless the tiles' overlaps fit them; `prefix` is the widgets' prefix on the node that has them."""
    if tiles.overlap_px * 2 > tiles.tile_px:
        raise ValueError(
            f"{prefix}overlap_px: {tiles.overlap_px} is more than half of {prefix}tile_px {tiles.tile_px}; use at "
            f"most {tiles.tile_px // 2}, or raise {prefix}tile_px to {tiles.overlap_px * 2}."
        )
    if tiles.temporal_overlap * 2 > tiles.temporal_frames:
        raise ValueError(
            f"{prefix}temporal_overlap: {tiles.temporal_overlap} is more than half of {prefix}temporal_frames "
            f"{tiles.temporal_frames}. Use at most {tiles.temporal_frames // 2}."
        )


class TiledDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSR_Decode",
            display_name="PatchVSR VAE Decode (tiled)",
            category=CATEGORY,
            description="Decodes the full-size latent in overlapping tiles in space and time (ComfyUI's tiled decode), "
            "so a 4K clip decodes in bounded memory. IMAGE frames out, ready for Create Video.",
            inputs=[
                io.Latent.Input("samples", tooltip="The full-size latent from PatchVSR Sampler."),
                io.Vae.Input("vae", tooltip="The Wan VAE of the model family."),
                io.Int.Input("tile_px", default=512, min=64, max=4096, step=32, tooltip="Tile size in output pixels."),
                io.Int.Input(
                    "overlap_px",
                    default=64,
                    min=0,
                    max=2048,
                    step=32,
                    tooltip="Overlap between tiles in pixels; blended linearly. Up to half of tile_px, used as set "
                    "(ComfyUI's VAE Decode (Tiled) lowers an overlap above a quarter of the tile to a quarter).",
                ),
                io.Int.Input(
                    "temporal_frames", default=64, min=8, max=4096, step=4, tooltip="Pixel frames decoded at a time."
                ),
                io.Int.Input(
                    "temporal_overlap",
                    default=8,
                    min=4,
                    max=4096,
                    step=4,
                    tooltip="Pixel frames shared by consecutive temporal tiles.",
                ),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def execute(cls, samples, vae, **widgets) -> io.NodeOutput:
        return io.NodeOutput(decode_frames_tiled(vae, samples["samples"], DecodeTiles(**widgets)))
