"""Long videos chunk by chunk (issue 22): where each chunk sits, how consecutive chunks hand over, the 8-bit
frames written to disk, and the identity that finished chunks are kept under.

A chunk is one temporal window of the model. Consecutive chunks share `overlap` latent frames: the new chunk's
first latent frames are held to the previous chunk's result (the encoding, in the new chunk's own causal
context, of the previous chunk's output pixels over the shared frames), and the shared pixel frames are
cross-faded from the previous chunk's pixels to the new chunk's.

Dimension legend: N pixel frames, H/W pixel rows/columns (IMAGE layout [N, H, W, 3]). Pure PyTorch and Python:
no ComfyUI.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from einops import rearrange

from .plan import VAE_TIME_STRIDE, latent_frames, pixel_frames

# Bumped whenever what a chunk computes changes, so chunks made by older code are never reused.
LAYOUT_VERSION = 2


@dataclass(frozen=True)
class Chunk:
    """One chunk, in pixel frames of the padded clip (half-open ranges)."""

    index: int
    start: int  # first frame the chunk denoises
    stop: int  # one past its last frame; stop - start is 1 + 4k (Wan's VAE)
    held: int  # frames at its start held to the previous chunk's result and cross-faded (0 for the first)
    write_stop: int  # one past the last frame it writes: the next chunk's start, or the clip's end

    @property
    def frames(self) -> int:
        return self.stop - self.start

    @property
    def held_latent(self) -> int:
        """Latent frames of the chunk held to the previous chunk's result."""
        return latent_frames(self.held) if self.held else 0


@dataclass(frozen=True)
class ChunkLayout:
    frames: int  # pixel frames of the source
    padded: int  # the smallest 1 + 4k >= frames: the source's last frame repeated, the repeats never written
    window: int  # pixel frames per chunk (1 + 4k)
    overlap: int  # latent frames consecutive chunks share
    chunks: tuple[Chunk, ...]

    @property
    def tail(self) -> int:
        """Pixel frames at a chunk's end that the next chunk holds (the cross-fade's length)."""
        return pixel_frames(self.overlap) if len(self.chunks) > 1 else 0


def max_overlap(window: int) -> int:
    """The most latent frames two chunks of `window` pixel frames can share: the next chunk must start at or
    after the end of the previous one's own held frames, so every frame is cross-faded at most once."""
    n = latent_frames(window)
    # stride 4 (n - overlap) >= held 4 overlap - 3
    return max(0, (4 * n + 3) // 8)


def chunk_layout(frames: int, window: int, overlap: int) -> ChunkLayout:
    """Chunks of `window` pixel frames (1 + 4k) over a clip of `frames` frames (any count >= 1), consecutive
    chunks sharing `overlap` latent frames (4 * overlap - 3 pixel frames).

    Chunk starts step by whole latent frames (4 pixel frames), so the next chunk's latent frames 1, 2, ... cover
    the same groups of 4 pixel frames as the previous chunk's do: the held latent frames then line up with
    the pixels they encode (its latent frame 0 is one pixel frame, as a chunk's first latent frame always is).
    The last chunk ends at the padded length and may be shorter than the window; it always has frames of its
    own beyond the held ones.
    """
    assert frames >= 1, f"a clip has at least one frame, got {frames}"
    assert window >= 1 and (window - 1) % VAE_TIME_STRIDE == 0, f"window of {window} frames is not 1 + 4k"
    padded = pixel_frames(math.ceil((frames - 1) / VAE_TIME_STRIDE) + 1)
    if padded <= window:
        return ChunkLayout(frames, padded, window, overlap, (Chunk(0, 0, padded, 0, frames),))
    assert 1 <= overlap <= max_overlap(window), (
        f"overlap {overlap} latent frames: a window of {window} frames allows 1 to {max_overlap(window)}"
    )
    stride = VAE_TIME_STRIDE * (latent_frames(window) - overlap)
    held = pixel_frames(overlap)
    count = math.ceil((padded - window) / stride) + 1
    starts = [k * stride for k in range(count)]
    chunks = tuple(
        Chunk(k, s, min(s + window, padded), held if k else 0, starts[k + 1] if k + 1 < count else frames)
        for k, s in enumerate(starts)
    )
    return ChunkLayout(frames, padded, window, overlap, chunks)


def fade_in(held: int) -> torch.Tensor:
    """[held] the new chunk's weight on each held frame of a cross-fade: (i + 1) / (held + 1), rising from
    near 0 (the previous chunk's frame) to near 1, so no frame is taken whole from either side."""
    return torch.arange(1, held + 1, dtype=torch.float32) / (held + 1)


def cross_fade(previous: torch.Tensor, new: torch.Tensor, start: int = 0) -> torch.Tensor:
    """previous: [held, H, W, 3] the previous chunk's shared frames; new: [n, H, W, 3] the new chunk's frames
    from its frame `start` on (a decoded slice) -> [n, H, W, 3] with those among the shared frames faded
    from the previous chunk's to the new chunk's (fade_in's weights at their places), the rest unchanged."""
    held = previous.shape[0]
    m = max(0, min(held - start, new.shape[0]))
    assert previous.shape[1:] == new.shape[1:], f"cross-fade of {tuple(previous.shape)} and {tuple(new.shape)}"
    if m == 0:
        return new
    w = rearrange(fade_in(held)[start : start + m].to(new), "n -> n 1 1 1")
    out = new.clone()
    out[:m] = previous[start : start + m].to(new) * (1 - w) + new[:m] * w
    return out


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """frames: [N, H, W, 3] in [0, 1] -> [N, H, W, 3] uint8, rounded to the nearest level (an 8-bit video's)."""
    return (frames.float() * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def pad_frames(frames: torch.Tensor, count: int) -> torch.Tensor:
    """frames: [n, H, W, 3] -> [count, H, W, 3], the last frame repeated (a clip's length made 1 + 4k)."""
    assert count >= frames.shape[0] >= 1, f"cannot pad {frames.shape[0]} frames to {count}"
    return torch.cat([frames, frames[-1:].expand(count - frames.shape[0], -1, -1, -1)])


# ComfyUI's tiled decode (comfy.utils.tiled_scale_multidim) holds four float32 copies of everything it decodes
# at its peak: the output, the weighted sum, the sum of weights and their quotient (4.03x measured on the CPU).
# A chunk's decode is the long-video path's largest allocation in RAM.
DECODE_COPIES = 4


def decode_peak_bytes(frames: int, hw: tuple[int, int]) -> int:
    """Bytes ComfyUI's tiled decode holds at its peak for `frames` frames of hw (h, w) pixels."""
    return DECODE_COPIES * frames * hw[0] * hw[1] * 3 * 4


def slice_frames(temporal_frames: int) -> int:
    """Frames one temporal slice of the streamed decode makes (nodes/encode.py decode_stream): whole latent
    frames of `temporal_frames` pixel frames, the first of them one frame (a causal VAE's start)."""
    return VAE_TIME_STRIDE * max(2, temporal_frames // VAE_TIME_STRIDE) - (VAE_TIME_STRIDE - 1)


def chunk_seed(seed: int, index: int) -> int:
    """The noise seed of chunk `index`: its own noise, as one long run would draw fresh noise for every frame;
    chunk 0 keeps the seed, so a one-chunk clip samples exactly as the short-clip graph does."""
    return (seed + index) % 2**64


# -- identity: what a finished chunk was made from -----------------------------------------------------------

# Every top-level key of a run's identity. Whatever changes the frames is in it; the key of a work folder is
# its hash, so a finished chunk is only ever reused by a run that would compute the same chunk.
IDENTITY_KEYS = (
    "layout_version",  # LAYOUT_VERSION
    "host",  # the ComfyUI version (its decode and samplers are part of the result)
    "source",  # the input file: path, size, modification time, a hash of its first and last MiB
    "model",  # the DiT: a fingerprint of some of its weights, its patches (LoRAs) and its options
    "vae",  # a fingerprint of some of the VAE's weights
    "positive",  # the conditioning, hashed whole
    "negative",
    "stitcher",  # the Latent Stitcher's settings (the default when unconnected)
    "adapter",  # a trained adapter's name and a fingerprint of its weights, or None
    "plan",  # the partitioner's widgets
    "sampler",  # the sampler's widgets
    "context",  # the global context's strength, noise_t, anchor_with_adapter
    "encode_tile_px",
    "decode",  # the tiled decode's widgets
    "layout",  # frames, window, overlap: the chunk layout
    "crf",  # the segments' encoder quality
)
# Tensors of up to this many elements are hashed whole (conditioning); larger ones (weights) by their shape,
# dtype and two strided samples of SAMPLED elements each: cheap at any model size, and exact (no sum, whose
# last digits depend on the thread count). A change of a large tensor that misses every sampled element is
# not seen; another model file or a fine-tune changes them all.
FULL_HASH_ELEMENTS = 1 << 22
SAMPLED = 4096
MAX_DEPTH = 6


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach()
    head = f"tensor{tuple(t.shape)}{t.dtype}".encode()
    try:
        flat = t.reshape(-1)
        if flat.numel() > FULL_HASH_ELEMENTS:
            step = flat.numel() // SAMPLED
            flat = torch.cat([flat[::step][:SAMPLED], flat[step // 2 :: step][:SAMPLED]])
        # Through float32 bytes: the same numbers hash alike whatever the storage (fp8 has no numpy dtype).
        return head + flat.to("cpu", torch.float32).contiguous().numpy().tobytes()
    except (RuntimeError, TypeError, NotImplementedError):
        # A tensor subclass that cannot be sliced or cast (a host's quantized weights): its shape and dtype.
        return head + f"<{type(t).__qualname__}>".encode()


def _update(h, obj, depth: int) -> None:
    """Feeds a canonical form of `obj` into hash `h`: numbers, strings, tensors, containers, dataclasses; a
    function or any other object by its qualified name only (objects may hold per-process state such as ids,
    which would make every restart look like new settings)."""
    if depth > MAX_DEPTH:
        h.update(b"<deep>")
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes, Fraction)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, enum.Enum):
        h.update(f"enum:{type(obj).__qualname__}.{obj.name};".encode())
    elif isinstance(obj, (torch.dtype, torch.device)):
        h.update(f"{type(obj).__name__}:{obj};".encode())
    elif isinstance(obj, torch.Tensor):
        h.update(_tensor_bytes(obj))
    elif isinstance(obj, np.ndarray):
        _update(h, torch.from_numpy(np.ascontiguousarray(obj)), depth)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(f"dc:{type(obj).__qualname__}(".encode())
        for f in dataclasses.fields(obj):
            h.update(f"{f.name}=".encode())
            _update(h, getattr(obj, f.name), depth + 1)
        h.update(b")")
    elif isinstance(obj, (list, tuple)):
        h.update(f"seq{len(obj)}[".encode())
        for item in obj:
            _update(h, item, depth + 1)
        h.update(b"]")
    elif isinstance(obj, dict):
        h.update(f"map{len(obj)}{{".encode())
        for key in sorted(obj, key=repr):
            _update(h, key, depth + 1)
            _update(h, obj[key], depth + 1)
        h.update(b"}")
    elif hasattr(obj, "weights") and not callable(obj):
        # Weight adapters (LoRA patches) carry their tensors in `weights`.
        h.update(f"obj:{type(obj).__qualname__}".encode())
        _update(h, obj.weights, depth + 1)
    else:
        name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
        module = getattr(obj, "__module__", None) or type(obj).__module__
        h.update(f"obj:{module}.{name};".encode())


def fingerprint(obj) -> str:
    """A hex digest of `obj` (see _update) that is the same in every process for the same content."""
    h = hashlib.sha256()
    _update(h, obj, 0)
    return h.hexdigest()


def run_key(identity: dict) -> str:
    """The hex key of a run's identity (IDENTITY_KEYS, each a JSON value): equal identities, equal keys."""
    assert tuple(sorted(identity)) == tuple(sorted(IDENTITY_KEYS)), (
        f"a run's identity has the keys {IDENTITY_KEYS}, got {sorted(identity)}"
    )
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
