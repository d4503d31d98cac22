"""Bicubic upscaling by regions and the tiled encode: equal to the whole-frame versions."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from models.video import encode_upscaled_tiled, resize_frames, upscale_region

pytestmark = pytest.mark.pure  # the pack's pure-PyTorch core: one host runs it (.ci/test)


@pytest.mark.parametrize("region", [(0, 96, 0, 160), (8, 40, 16, 80), (50, 96, 120, 160), (1, 2, 3, 4)])
def test_region_upscale_equals_full_frame_bicubic(region):
    frames = torch.rand(3, 30, 52, 3, generator=torch.Generator().manual_seed(0))
    full = resize_frames(frames, (96, 160))
    y0, y1, x0, x1 = region
    torch.testing.assert_close(upscale_region(frames, (96, 160), *region), full[:, y0:y1, x0:x1], atol=1e-5, rtol=0)


def pool_encode(pixels):
    """A stand-in VAE that is local to each 8x8 block: [N, H, W, 3] -> [1, 3, N, H/8, W/8]."""
    x = F.avg_pool2d(rearrange(pixels, "n h w c -> n c h w"), 8)
    return rearrange(x, "n c h w -> 1 c n h w")


def test_tiled_encode_matches_whole_frame_encode():
    frames = torch.rand(2, 36, 60, 3, generator=torch.Generator().manual_seed(1))
    target = (144, 240)
    whole = pool_encode(resize_frames(frames, target))
    seen = []
    tiled = encode_upscaled_tiled(
        frames, target, 8, pool_encode, tile=8, overlap=2, on_tile=lambda i, n: seen.append(n)
    )
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    assert len(seen) > 4, "the frame was not split into tiles"
