"""The partition: base grid tiles the frame, bridges cover every seam, windows cover every frame."""

import pytest

from models.plan import Kind, PlanConfig, latent_frames, make_plan, pixel_frames, target_hw

pytestmark = pytest.mark.pure  # the pack's pure-PyTorch core: one host runs it (.ci/test)


@pytest.mark.parametrize(
    "shape,patch,window",
    [((21, 180, 320), (60, 104), 21), ((1, 270, 480), (60, 104), 21), ((41, 90, 160), (64, 64), 21),
     ((3, 17, 23), (6, 10), 3), ((5, 64, 64), (64, 64), 21), ((1, 135, 240), (44, 80), 31)],
)  # fmt: skip
def test_plan_covers_and_bridges_every_seam(shape, patch, window):
    plan = make_plan(PlanConfig(shape, patch, window))  # make_plan asserts exact base coverage itself
    T, H, W = shape
    for b in plan.base_boxes():
        assert b.height <= patch[0] and b.width <= patch[1], "a base patch exceeds the native size"
    # Every interior seam of the base grid lies strictly inside some bridging patch.
    for x in plan.col_edges[1:-1]:
        assert any(b.kind == Kind.AUX_H and b.x0 < x < b.x1 for b in plan.boxes)
    for y in plan.row_edges[1:-1]:
        assert any(b.kind == Kind.AUX_V and b.y0 < y < b.y1 for b in plan.boxes)
    for y in plan.row_edges[1:-1]:
        for x in plan.col_edges[1:-1]:
            assert any(b.kind == Kind.AUX_X and b.y0 < y < b.y1 and b.x0 < x < b.x1 for b in plan.boxes)
    rows, cols = len(plan.row_edges) - 1, len(plan.col_edges) - 1
    assert plan.count(Kind.AUX_H) == rows * (cols - 1)
    assert plan.count(Kind.AUX_V) == (rows - 1) * cols
    assert plan.count(Kind.AUX_X) == (rows - 1) * (cols - 1)
    assert all(w.length <= window for w in plan.windows)
    if T > window:
        assert all(b.t0 < a.t1 for a, b in zip(plan.windows, plan.windows[1:])), "windows must overlap"


def test_frame_counts():
    assert latent_frames(81) == 21 and pixel_frames(21) == 81 and latent_frames(1) == 1


@pytest.mark.parametrize(
    "lr,preset,scale,keep,want",
    [((480, 832), "2K", 1, True, (1440, 2496)), ((720, 1280), "4K", 1, True, (2160, 3840)),
     ((480, 832), "2K", 1, False, (1440, 2560)), ((832, 480), "2K", 1, False, (2560, 1440)),
     ((480, 832), "scale", 2.5, True, (1200, 2080)), ((100, 99), "scale", 1.0, True, (112, 112)),
     ((100, 180), "scale", 1.0, True, (112, 192)), ((99, 57), "scale", 1.25, True, (128, 64))],
)  # fmt: skip
def test_target_sizes(lr, preset, scale, keep, want):
    assert target_hw(lr, preset, scale, keep, 16) == want


@pytest.mark.parametrize("pixel_window", [1, 5, 9])
def test_short_windows_cover_a_long_clip(pixel_window):
    """Windows of 1 or 2 latent frames (1 or 5 pixel frames) cannot share 2 frames; they share what they can."""
    plan = make_plan(PlanConfig((21, 8, 8), (8, 8), latent_frames(pixel_window)))  # asserts coverage itself
    n = latent_frames(pixel_window)
    assert all(w.length == n for w in plan.windows)
    shared = [a.t1 - b.t0 for a, b in zip(plan.windows, plan.windows[1:])]
    assert min(shared) >= min(2, n - 1), shared


def test_scale_never_shrinks_the_input():
    for h in range(16, 200, 3):
        th, tw = target_hw((h, h + 5), "scale", 1.0, True, 8)
        assert th >= h and tw >= h + 5 and th % 8 == 0 and tw % 8 == 0
