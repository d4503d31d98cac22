"""The held-out clips' camera stays inside its photograph (tests/tiny/photos.py): a clip whose view left the
photo would repeat its border pixels, and every pixel proof, the demo and its picture are measured on these
clips."""

import pytest
import torch
from tiny.photos import camera_clip

pytestmark = pytest.mark.pure  # the pack's pure-PyTorch core: one host runs it (.ci/test)


def coordinate_photo(h: int, w: int) -> torch.Tensor:
    """[3, H, W]: channel 0 is the column, channel 1 the row (both in (0, 1)), so a clip's pixels say where
    in the photo they were sampled."""
    y, x = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    return torch.stack([x, y, torch.zeros_like(x)])


def leaves_photo(clip: torch.Tensor) -> bool:
    """Sampling past the edge clamps to the border: the sampled column (row) stops increasing along a row
    (column) of the clip."""
    dx = clip[:, 0, :, 1:] - clip[:, 0, :, :-1]
    dy = clip[:, 1, 1:, :] - clip[:, 1, :-1, :]
    return bool((dx <= 1e-6).any() or (dy <= 1e-6).any())


@pytest.mark.parametrize("seed", range(8))
def test_a_long_pan_over_a_small_photo_stays_inside(seed):
    photo = coordinate_photo(120, 170)  # just larger than the view: no room for 33 frames of panning
    clip = camera_clip(photo, (96, 144), 33, torch.Generator().manual_seed(seed), scale=1.0, inside=True)
    assert clip.shape == (33, 3, 96, 144)
    assert not leaves_photo(clip)


def test_without_inside_the_same_pans_leave_the_photo():
    # The check above can fail: the unbounded camera (kept for the committed models' trainers) does leave.
    photo = coordinate_photo(120, 170)
    left = [
        leaves_photo(camera_clip(photo, (96, 144), 33, torch.Generator().manual_seed(s), scale=1.0)) for s in range(8)
    ]
    assert any(left), left
