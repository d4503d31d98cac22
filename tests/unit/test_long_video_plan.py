"""The long-video path's pure parts: the chunk layout, the cross-fade, 8-bit frames, and the identity that
finished chunks are kept under."""

import functools
from dataclasses import dataclass

import pytest
import torch

from models.blend import StitchConfig, StitchMode
from models.long_video import (
    IDENTITY_KEYS,
    chunk_layout,
    chunk_seed,
    cross_fade,
    fade_in,
    fingerprint,
    max_overlap,
    pad_frames,
    run_key,
    to_uint8,
)

pytestmark = pytest.mark.pure  # the pack's pure-PyTorch core: one host runs it (.ci/test)

CASES = [
    (frames, window, overlap)
    for window in (5, 13, 17, 81)
    for frames in (1, 4, 5, 17, 18, 30, 81, 82, 161, 321, 961)
    for overlap in range(1, max_overlap(window) + 1)
]


@pytest.mark.parametrize(("frames", "window", "overlap"), CASES)
def test_chunks_write_every_frame_once_and_hold_the_previous_tail(frames, window, overlap):
    layout = chunk_layout(frames, window, overlap)
    chunks = layout.chunks
    assert (layout.padded - 1) % 4 == 0 and 0 <= layout.padded - frames <= 3
    assert chunks[0].start == 0 and chunks[0].held == 0 and chunks[-1].stop == layout.padded
    written = [f for c in chunks for f in range(c.start, c.write_stop)]
    assert written == list(range(frames)), "every source frame is written once, in order"
    held = 4 * overlap - 3
    for c in chunks:
        assert c.frames <= window and (c.frames - 1) % 4 == 0, f"{c}: not a Wan length within the window"
        assert c.write_stop <= min(c.stop, frames)
    for prev, c in zip(chunks, chunks[1:]):
        assert c.held == held and c.held_latent == overlap
        # Latent frames line up: the start moves by whole groups of 4 pixel frames.
        assert (c.start - prev.start) % 4 == 0
        # The held frames are the previous chunk's last ones, and it writes up to them, not over them.
        assert prev.stop - c.start == held and prev.write_stop == c.start
        # Each chunk denoises frames of its own beyond the held ones, and the previous chunk's own held frames
        # end before its tail starts (a frame is cross-faded once at most).
        assert c.frames > c.held and prev.start + prev.held <= c.start
    assert all(c.stop <= frames for c in chunks[:-1]), "only the last chunk reaches the padding"


@pytest.mark.parametrize("frames", [1, 33, 81])
def test_a_clip_within_one_window_is_one_chunk(frames):
    layout = chunk_layout(frames, 81, 3)
    (c,) = layout.chunks
    assert (c.start, c.stop, c.held, c.write_stop) == (0, frames, 0, frames) and layout.tail == 0


def test_chunk_counts_of_the_memory_measurement():
    # Wan 2.1's 81-frame window, 3 latent frames shared: 9 frames held, a new chunk every 72 frames.
    counts = {n: len(chunk_layout(n, 81, 3).chunks) for n in (81, 321, 961)}
    assert counts == {81: 1, 321: 5, 961: 14}
    assert chunk_layout(961, 81, 3).tail == 9


def test_overlap_limit():
    assert max_overlap(81) == 10 and max_overlap(5) == 1 and max_overlap(1) == 0
    with pytest.raises(AssertionError):
        chunk_layout(200, 81, max_overlap(81) + 1)


def test_cross_fade_ramps_from_the_previous_chunk_to_the_new_one():
    w = fade_in(5)
    assert torch.all(w[1:] > w[:-1]) and 0 < w[0] and w[-1] < 1
    torch.testing.assert_close(w + w.flip(0), torch.ones(5))  # symmetric: as much of each side overall
    prev, new = torch.zeros(5, 2, 3, 3), torch.ones(5, 2, 3, 3)
    faded = cross_fade(prev, new)
    torch.testing.assert_close(faded[:, 0, 0, 0], w)
    same = torch.rand(5, 2, 3, 3)
    torch.testing.assert_close(cross_fade(same, same.clone()), same)


def test_uint8_rounds_to_the_nearest_level_and_pads_by_repeating_the_last_frame():
    x = torch.tensor([0.0, 0.4 / 255, 0.6 / 255, 1.0, 1.2, -0.1]).reshape(1, 1, 2, 3)
    assert to_uint8(x).reshape(-1).tolist() == [0, 0, 1, 255, 255, 0]
    frames = torch.rand(3, 2, 2, 3)
    padded = pad_frames(frames, 5)
    assert padded.shape[0] == 5 and torch.equal(padded[:3], frames) and torch.equal(padded[4], frames[2])


def test_chunk_seeds_start_at_the_seed():
    assert chunk_seed(7, 0) == 7 and chunk_seed(7, 3) == 10 and chunk_seed(2**64 - 1, 1) == 0


@dataclass(frozen=True)
class Holder:
    value: float
    weights: torch.Tensor


class StatefulHook:
    """Stands in for an object another node put on the model, with per-process state (an id)."""

    def __init__(self):
        self.token = id(self)


def test_fingerprint_sees_content_not_identity():
    t = torch.arange(12.0).reshape(3, 4)
    assert fingerprint({"a": t, "b": [1, "x"]}) == fingerprint({"b": [1, "x"], "a": t.clone()})
    assert fingerprint({"a": t}) != fingerprint({"a": t + 1e-3})
    assert fingerprint(t) != fingerprint(t.reshape(4, 3)) and fingerprint(t) != fingerprint(t.half())
    assert fingerprint(Holder(1.0, t)) != fingerprint(Holder(2.0, t))
    assert fingerprint(StitchConfig()) != fingerprint(StitchConfig(StitchMode.WEIGHTED))
    # Functions by their name; other objects by their class, whatever per-process state they hold.
    assert fingerprint(functools.partial(max)) == fingerprint(functools.partial(min))
    assert fingerprint(test_overlap_limit) != fingerprint(test_chunk_seeds_start_at_the_seed)
    assert fingerprint([StatefulHook()]) == fingerprint([StatefulHook()])


def test_fingerprint_of_large_weights_is_sampled_but_sees_a_change():
    w = torch.randn(4096, 2048, generator=torch.Generator().manual_seed(0))  # 8M elements: sampled
    step = w.numel() // 4096
    for index in (0, step // 2, 100 * step):  # elements of either sample
        changed = w.clone()
        changed.view(-1)[index] += 1e-3
        assert fingerprint(changed) != fingerprint(w)
    assert fingerprint(w) == fingerprint(w.clone()) and fingerprint(w) != fingerprint(w * 1.0001)


def test_run_key_depends_on_every_key():
    identity = {k: {"value": i} for i, k in enumerate(IDENTITY_KEYS)}
    key = run_key(identity)
    assert run_key(dict(reversed(list(identity.items())))) == key
    for k in IDENTITY_KEYS:
        assert run_key({**identity, k: {"value": -1}}) != key, k
    with pytest.raises(AssertionError):
        run_key({k: v for k, v in identity.items() if k != "crf"})
