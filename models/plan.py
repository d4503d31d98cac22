"""Patch plans: where every patch of the full-size latent sits (PatchVSR section 3.3, Fig. 2).

Dimension legend: T latent frames, H latent rows, W latent columns. Boxes are half-open ranges in latent
cells. Base boxes tile the frame without overlap; auxiliary ("bridging") boxes are made of the halves of
adjacent base boxes, so every seam between base boxes lies on the centre line of some auxiliary box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

VAE_TIME_STRIDE = 4  # Wan's VAE maps 1 + 4k pixel frames to 1 + k latent frames


def latent_frames(pixel_frames: int) -> int:
    """Latent frame count of a Wan clip of `pixel_frames` frames (which must be 1 + 4k)."""
    return (pixel_frames - 1) // VAE_TIME_STRIDE + 1


def pixel_frames(n_latent: int) -> int:
    """Pixel frame count that a Wan VAE decodes from `n_latent` latent frames."""
    return (n_latent - 1) * VAE_TIME_STRIDE + 1


class Kind(str, Enum):
    BASE = "base"
    AUX_H = "aux_h"  # bridges two horizontal neighbours: its split line is vertical
    AUX_V = "aux_v"  # bridges two vertical neighbours: its split line is horizontal
    AUX_X = "aux_x"  # sits on a four-patch intersection, shared by all four


@dataclass(frozen=True)
class Box:
    """A spatial patch in latent cells, [y0, y1) x [x0, x1)."""

    kind: Kind
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


@dataclass(frozen=True)
class Window:
    """A temporal window in latent frames, [t0, t1)."""

    t0: int
    t1: int

    @property
    def length(self) -> int:
        return self.t1 - self.t0


@dataclass(frozen=True)
class PlanConfig:
    """What the artist asks for; everything is in latent units except where named `_px`."""

    latent_shape: tuple[int, int, int]  # (T, H, W) of the full-size (upscaled) latent
    patch_hw: tuple[int, int]  # (h, w) of one patch in latent cells: the base model's native size by default
    window_frames: int  # latent frames per temporal window (21 for Wan 2.1's 81 pixel frames)
    align: int = 2  # Wan's DiT patchifies 2x2 latent cells into one token: keep interior boundaries on it
    min_window_overlap: int = 2  # latent frames two temporal windows share at least, so they can blend


@dataclass(frozen=True)
class Geometry:
    """The pixel-side facts of a plan, so later nodes can check their inputs against it."""

    family: str  # base model family the plan was made for, e.g. "wan2.1"
    latent_channels: int  # 16 for Wan 2.1 (and 2.2 A14B), 48 for Wan 2.2 TI2V-5B
    spatial_stride: int  # pixels per latent cell: 8 for Wan 2.1, 16 for Wan 2.2 TI2V-5B
    lr_hw: tuple[int, int]  # input frame size in pixels
    target_hw: tuple[int, int]  # output frame size in pixels
    patch_hw: tuple[int, int]  # patch size in pixels
    frames: int  # pixel frames of the clip (1 + 4k)

    @property
    def scale(self) -> float:
        """Upscale factor (the larger of the two axes' factors)."""
        return max(self.target_hw[0] / self.lr_hw[0], self.target_hw[1] / self.lr_hw[1])


@dataclass(frozen=True)
class PatchPlan:
    """An immutable patch plan. `boxes` holds base boxes first, then auxiliary ones."""

    config: PlanConfig
    row_edges: tuple[int, ...]  # base grid boundaries along H, from 0 to H
    col_edges: tuple[int, ...]  # base grid boundaries along W, from 0 to W
    boxes: tuple[Box, ...]
    windows: tuple[Window, ...]
    geometry: Geometry | None = None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.config.latent_shape

    def base_boxes(self) -> tuple[Box, ...]:
        return tuple(b for b in self.boxes if b.kind == Kind.BASE)

    def aux_boxes(self) -> tuple[Box, ...]:
        return tuple(b for b in self.boxes if b.kind != Kind.BASE)

    def count(self, kind: Kind) -> int:
        return sum(1 for b in self.boxes if b.kind == kind)


def video_plan(geometry: Geometry, window_frames: int) -> PatchPlan:
    """The plan of a video the partitioner has checked: `geometry` says its sizes in pixels (frames 1 + 4k,
    target and patch on the stride), `window_frames` the pixel frames per temporal window (1 + 4k)."""
    g, s = geometry, geometry.spatial_stride
    cfg = PlanConfig(
        (latent_frames(g.frames), g.target_hw[0] // s, g.target_hw[1] // s),
        (g.patch_hw[0] // s, g.patch_hw[1] // s),
        latent_frames(window_frames),
    )
    return make_plan(cfg, geometry=g)


def _aligned_edges(length: int, n: int, align: int) -> list[int]:
    """n + 1 boundaries from 0 to `length`, evenly spread, interior ones on multiples of `align`."""
    edges = [0]
    for i in range(1, n):
        edges.append(int(round(i * length / n / align)) * align)
    edges.append(length)
    assert all(b > a for a, b in zip(edges, edges[1:])), f"degenerate split of {length} into {n}: {edges}"
    return edges


def _midpoints(edges: list[int], align: int) -> list[int]:
    """Centre of each base interval, on the token grid where the interval allows it."""
    mids = []
    for a, b in zip(edges, edges[1:]):
        m = a + ((b - a) // 2 // align) * align
        mids.append(m if a < m < b else a + (b - a) // 2)
    return mids


def _windows(total: int, length: int, min_overlap: int) -> list[Window]:
    """Temporal windows of `length` frames spread evenly over `total`, overlapping by >= `min_overlap`."""
    if total <= length:
        return [Window(0, total)]
    # Windows of 1 or 2 latent frames (1 or 5 pixel frames, valid Wan lengths) cannot share 2 frames: they
    # share what they can (a 1-frame window none: its frames are denoised independently).
    stride = length - min(min_overlap, length - 1)
    assert stride > 0, f"window of {length} latent frames cannot advance"
    n = math.ceil((total - length) / stride) + 1
    starts = [round(k * (total - length) / (n - 1)) for k in range(n)]
    return [Window(s, s + length) for s in starts]


def make_plan(config: PlanConfig, with_aux: bool = True, geometry: Geometry | None = None) -> PatchPlan:
    """Builds the base grid, the bridging patches and the temporal windows, and checks coverage."""
    T, H, W = config.latent_shape
    ph, pw = config.patch_hw
    assert ph <= H and pw <= W, f"patch {ph}x{pw} is larger than the latent frame {H}x{W}"
    # 1. Base grid: as few patches as cover the frame, each at most the native size, spread evenly so no
    #    strip is left over and no patch leaves the frame.
    rows = _aligned_edges(H, math.ceil(H / ph), config.align)
    cols = _aligned_edges(W, math.ceil(W / pw), config.align)
    boxes = [Box(Kind.BASE, y0, y1, x0, x1) for y0, y1 in zip(rows, rows[1:]) for x0, x1 in zip(cols, cols[1:])]
    # 2. Bridging patches from the halves of adjacent base patches (paper Fig. 2): 50% overlap.
    if with_aux:
        ym, xm = _midpoints(rows, config.align), _midpoints(cols, config.align)
        for y0, y1 in zip(rows, rows[1:]):
            boxes += [Box(Kind.AUX_H, y0, y1, a, b) for a, b in zip(xm, xm[1:])]
        for a, b in zip(ym, ym[1:]):
            boxes += [Box(Kind.AUX_V, a, b, x0, x1) for x0, x1 in zip(cols, cols[1:])]
        for ya, yb in zip(ym, ym[1:]):
            boxes += [Box(Kind.AUX_X, ya, yb, xa, xb) for xa, xb in zip(xm, xm[1:])]
    # 3. Temporal windows when the clip is longer than the model's frame count.
    windows = _windows(T, config.window_frames, config.min_window_overlap)
    plan = PatchPlan(config, tuple(rows), tuple(cols), tuple(boxes), tuple(windows), geometry)
    assert_covers(plan)
    return plan


def _interleaved_windows(
    avoid: set[int], total: int, n: int, limit: int, gap: int, shortest: int | None = None, align: int = 1
) -> list[int] | None:
    """Borders of `n` windows of `shortest` (default `limit // 2`) to `limit` cells tiling `total`, each
    interior border on a multiple of `align`, at least `gap` cells from every border in `avoid` and as far
    from them as such windows allow; None if there is no such set. A dynamic programme over (windows placed,
    cell reached): the best smallest distance. Used for temporal windows (frames) and grid cells (rows or
    columns) alike."""
    shortest = max(1, limit // 2 if shortest is None else shortest)  # long windows: each sees as much as it can

    far = [min((abs(p - e) for e in avoid), default=total + 1) for p in range(total)] + [total + 1]
    best = [[-1] * (total + 1) for _ in range(n + 1)]
    came = [[0] * (total + 1) for _ in range(n + 1)]
    best[0][0] = total + 1
    for k in range(1, n + 1):
        prev, row = best[k - 1], best[k]
        # Windows still to come must fit: at most `limit` cells each.
        for p in range(max(k * shortest, total - (n - k) * limit), min(total, k * limit) + 1):
            if far[p] < gap or (p % align and p != total):
                continue
            qs = range(max(0, p - limit), p - shortest + 1)
            top = max((prev[q] for q in qs), default=-1)
            if top >= 0:
                v = min(top, far[p])  # ties go to the longest window ending here
                row[p], came[k][p] = v, next(q for q in qs if prev[q] >= v)
    if best[n][total] < gap:
        return None
    out = [total]
    for k in range(n, 0, -1):
        out.append(came[k][out[-1]])
    return out[::-1]


def window_phases(total: int, length: int, fade_t: int, phases: int) -> list[list[int]]:
    """Window borders of each temporal phase of the shifted stitch (SimpleGVR's interleaved units).

    Phase 0 tiles the clip with the fewest windows short enough to grow by a cross-fade of `fade_t` frames
    and still fit the model's `length`. Each later phase has as many windows, its borders at least past the
    cross-fades of every earlier phase's (so the extra cost of temporal overlap is the fades alone), up to
    `phases` phases: a border then recurs only once every `phases` evaluations. Where the fewest windows
    leave no room for 3 phases, one window more is tried; where neither leaves room for a second phase,
    every border moves to the middle of its window. A clip within one window stays whole.
    """
    if total <= length:
        return [[0, total]]
    limit = max(1, length - fade_t)
    fewest = math.ceil(total / limit)
    best: list[list[int]] = []
    # The fewest windows may fill the model so exactly that no border can move (200 latent frames in windows
    # of 19): one window more costs one fade and frees room for the rotation; a long clip needs room at
    # every border (windows `fade_t` shorter), a fade's worth of frames per window more.
    for n in sorted({fewest, fewest + 1, math.ceil(total / max(1, limit - max(1, fade_t)))} & set(range(total + 1))):
        first = _aligned_edges(total, n, 1)
        out, avoid = [first], set(first[1:-1])
        while len(out) < phases:
            nxt = _interleaved_windows(avoid, total, n, limit, max(1, fade_t))
            if nxt is None:
                break
            out.append(nxt)
            avoid |= set(nxt[1:-1])
        if len(out) > len(best):
            best = out
        if len(best) >= min(phases, 3):
            break
    if len(best) == 1 and min(b - a for a, b in zip(best[0], best[0][1:])) >= 2:
        best.append([0] + _midpoints(best[0], 1) + [total])
    return best


def _moved_edges(edges: list[int], native: int, min_cell: float, gap: int, align: int) -> list[int]:
    """Borders of the moved grid along one axis: as many cells as the base grid's `edges` or one more, each
    between `min_cell` of the native size and the native size, every interior border as far from the base
    grid's as such cells allow (at least `gap`). Where no such cells exist, the smallest cell is let down in
    eighths of the native size to half of it; below that, every border goes to the centre of its cell (with
    half-size strips at the frame's edges). An axis with one cell is not moved: that would cut it in two."""
    if len(edges) <= 2:
        return edges
    total, n, avoid = edges[-1], len(edges) - 1, set(edges[1:-1])
    for eighths in range(math.ceil(8 * min_cell - 1e-9), 3, -1):
        shortest = min(native, max(align, math.ceil(eighths * native / 8 / align) * align))
        found = []
        for m in (n, n + 1):  # one cell more frees room to move every border (a frame tiled at native size)
            got = _interleaved_windows(avoid, total, m, native, gap, shortest, align)
            if got is not None:
                found.append((min(abs(a - b) for a in got[1:-1] for b in avoid), -m, got))
        if found:
            return max(found)[2]  # the farthest borders; on a tie the fewer, larger cells
    if min(b - a for a, b in zip(edges, edges[1:])) < 2:
        return edges
    return [0] + _midpoints(edges, align) + [total]


def shifted_grids(
    plan: PatchPlan, fade_t: int = 0, phases: int = 2, min_cell: float = 0.625, gap: int = 1
) -> tuple[tuple[PatchPlan, ...], tuple[PatchPlan, ...]]:
    """The grids the shifted stitch's steps take in turn: base boxes only, no overlap in space or time.
    Returns (base, moved): one grid per temporal phase on each of its two spatial layouts.

    In space the steps alternate between the plan's own base grid and a moved one (_moved_edges) whose
    interior borders all sit away from the base grid's, so no border of one is a border of the next
    (SpotDiffusion's shifted windows), and whose cells keep at least `min_cell` of the model's native size
    per axis, so no patch is a thin strip the model never saw. Its token count is the frame's. In time the
    windows rotate through window_phases' borders.
    """
    cfg = plan.config
    T, H, W = cfg.latent_shape
    align = cfg.align
    ph, pw = cfg.patch_hw
    space = [
        (list(plan.row_edges), list(plan.col_edges)),
        (
            _moved_edges(list(plan.row_edges), ph, min_cell, gap, align),
            _moved_edges(list(plan.col_edges), pw, min_cell, gap, align),
        ),
    ]
    times = window_phases(T, cfg.window_frames, fade_t, phases)
    out = []
    for rows, cols in space:
        boxes = tuple(
            Box(Kind.BASE, y0, y1, x0, x1) for y0, y1 in zip(rows, rows[1:]) for x0, x1 in zip(cols, cols[1:])
        )
        grids = []
        for edges in times:
            windows = tuple(Window(a, b) for a, b in zip(edges, edges[1:]))
            grid = PatchPlan(cfg, tuple(rows), tuple(cols), boxes, windows, plan.geometry)
            assert_covers(grid)
            grids.append(grid)
        out.append(tuple(grids))
    return out[0], out[1]


def final_grid(plan: PatchPlan) -> PatchPlan:
    """The grid of the shifted stitch's last step: base boxes only, every interior border at the centre of
    a base cell (on the token grid), so each border of the base grid lies in the middle of one of its
    cells, as each seam lies in the middle of a bridging patch in the paper (an axis with one base cell is
    kept whole: it has no border to cover). Its cells reach from one base cell's centre to the next: at
    most the native size, half of a base cell at the frame's edges. In time it keeps the plan's own
    overlapping windows (the paper's): a cut between windows at the last step would stay in the result."""
    cfg = plan.config
    _, H, W = cfg.latent_shape

    def centred(edges: tuple[int, ...], total: int) -> list[int]:
        if len(edges) <= 2 or min(b - a for a, b in zip(edges, edges[1:])) < 2:  # no centre to move to
            return list(edges)
        return [0] + _midpoints(list(edges), cfg.align) + [total]

    rows, cols = centred(plan.row_edges, H), centred(plan.col_edges, W)
    boxes = tuple(Box(Kind.BASE, y0, y1, x0, x1) for y0, y1 in zip(rows, rows[1:]) for x0, x1 in zip(cols, cols[1:]))
    grid = PatchPlan(cfg, tuple(rows), tuple(cols), boxes, plan.windows, plan.geometry)
    assert_covers(grid)
    return grid


def assert_covers(plan: PatchPlan) -> None:
    """Every latent cell lies in exactly one base box and in at least one window; no box leaves the frame.
    (Boxes inside the frame that do not overlap and whose areas sum to the frame's tile it exactly.)"""
    T, H, W = plan.latent_shape
    for b in plan.boxes:
        assert 0 <= b.y0 < b.y1 <= H and 0 <= b.x0 < b.x1 <= W, f"{b} leaves the {H}x{W} frame"
    base = plan.base_boxes()
    for i, a in enumerate(base):
        for b in base[i + 1 :]:
            assert min(a.y1, b.y1) <= max(a.y0, b.y0) or min(a.x1, b.x1) <= max(a.x0, b.x0), f"{a} overlaps {b}"
    area = sum(b.height * b.width for b in base)
    assert area == H * W, f"base grid covers {area} of the {H}x{W} = {H * W} latent cells"
    covered = set()
    for w in plan.windows:
        assert 0 <= w.t0 < w.t1 <= T, f"{w} leaves the {T}-frame clip"
        covered.update(range(w.t0, w.t1))
    assert covered == set(range(T)), f"windows leave latent frames {sorted(set(range(T)) - covered)} uncovered"


PRESETS = {"2K": (1440, 2560), "4K": (2160, 3840)}  # (h, w) landscape; portrait inputs get them turned


def target_hw(lr_hw: tuple[int, int], preset: str, scale: float, keep_aspect: bool, stride: int) -> tuple[int, int]:
    """Output frame size in pixels, each side a multiple of `stride`.

    preset "scale" multiplies the input by `scale`; "2K"/"4K" give exactly that frame (turned for portrait
    inputs), or with keep_aspect the largest frame of the input's aspect that fits inside it.
    """
    h, w = lr_hw

    def snap(v: float) -> int:
        return max(stride, int(round(v / stride)) * stride)

    if preset == "scale":
        # An upscale never shrinks: rounding to the stride goes up where rounding to the nearest would fall
        # below the input (scale 1.0 on a 100 px side gives 104, not 96).
        return tuple(max(snap(v * scale), math.ceil(v / stride) * stride) for v in (h, w))
    ph, pw = PRESETS[preset]
    if h > w:
        ph, pw = pw, ph
    if not keep_aspect:
        return ph, pw
    fit = min(ph / h, pw / w)
    return min(ph, snap(h * fit)), min(pw, snap(w * fit))
