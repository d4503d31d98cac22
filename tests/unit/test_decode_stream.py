"""The streamed decode (nodes/encode.py decode_stream): slices of latent frames through the host's tiled decode,
handed on in order, each frame once, cross-faded where slices share frames. A stand-in VAE whose decode
gives every frame its index in the whole clip (as a causal Wan VAE places a slice's frames) shows the
arithmetic: slices that agree fade into the same values, and every frame arrives once, in order."""

import sys
import types

import pytest
import torch
from harness.inprocess import import_comfy
from harness.paths import REPO


def pack_module(name: str):
    """A module of the pack, imported as package `patchvsr` without ComfyUI's custom-node loader."""
    import_comfy()
    if "patchvsr" not in sys.modules:
        pkg = types.ModuleType("patchvsr")
        pkg.__path__ = [str(REPO)]
        sys.modules["patchvsr"] = pkg
    return __import__(f"patchvsr.{name}", fromlist=["_"])


class IndexVAE:
    """decode_tiled of latent frames [a, b) -> frames whose value is their index in the whole clip: the
    first at 4a (a causal VAE's start, where ComfyUI's temporal tiling puts it), then 4 per latent frame."""

    latent_channels = 16

    def __init__(self, offset: int = 0):
        self.calls = []
        self.offset = offset  # slices starting past 0 decode their frames this much off (a mismatch to fade)

    def spacial_compression_decode(self):
        return 8

    def temporal_compression_decode(self):
        return 4

    def decode_tiled(self, x, tile_x, tile_y, overlap, tile_t, overlap_t):
        a = int(x[0, 0, 0, 0, 0])  # the test's latents carry their own frame index
        n = x.shape[2]
        self.calls.append((a, a + n))
        first = 4 * a
        idx = torch.arange(first, first + 4 * n - 3, dtype=torch.float32) + (self.offset if a else 0)
        return idx.view(1, -1, 1, 1, 1).expand(1, -1, 2, 2, 3).clone()


def latent(frames: int) -> torch.Tensor:
    x = torch.zeros(1, 16, frames, 1, 1)
    x[0, 0, :, 0, 0] = torch.arange(frames, dtype=torch.float32)
    return x


@pytest.mark.parametrize("frames", [1, 5, 16, 17, 40, 61])
def test_every_frame_once_in_order(frames):
    enc = pack_module("nodes.encode")
    tiles = enc.DecodeTiles(tile_px=512, overlap_px=64, temporal_frames=64, temporal_overlap=8)  # 16 / 2 latent
    vae, got = IndexVAE(), []
    enc.decode_stream(vae, latent(frames), tiles, got.append)
    out = torch.cat(got)[:, 0, 0, 0]
    # Slices that agree fade into the same values (to float rounding): every frame once, in order.
    torch.testing.assert_close(out, torch.arange(4 * frames - 3, dtype=torch.float32), atol=1e-4, rtol=0)
    assert max(n for _, n in [(a, b - a) for a, b in vae.calls]) <= 16  # one slice of 16 latent frames at most
    assert len(vae.calls) == (1 if frames <= 16 else 1 + -(-(frames - 16) // 14))
    assert all(len(part) > 0 for part in got)


def test_slices_cross_fade_over_their_shared_frames():
    """Where a slice decodes its shared frames differently (here 100 off), the frames fade from the
    earlier slice's values to the later one's with weights (i + 1) / (m + 1)."""
    enc = pack_module("nodes.encode")
    tiles = enc.DecodeTiles(tile_px=512, overlap_px=64, temporal_frames=64, temporal_overlap=12)  # 16 / 3 latent
    got = []
    enc.decode_stream(IndexVAE(offset=100), latent(20), tiles, got.append)
    out = torch.cat(got)[:, 0, 0, 0]
    start = 4 * (16 - 3)  # the second slice starts at latent frame 13: its first frame is frame 52
    shared = 4 * 3 - 3
    w = (torch.arange(shared, dtype=torch.float32) + 1) / (shared + 1)
    want = torch.arange(start, start + shared, dtype=torch.float32) + 100 * w
    torch.testing.assert_close(out[start : start + shared], want)
    torch.testing.assert_close(out[:start], torch.arange(start, dtype=torch.float32))
    torch.testing.assert_close(out[start + shared :], torch.arange(start + shared, len(out), dtype=torch.float32) + 100)
