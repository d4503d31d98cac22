"""The demo's side-by-side picture: one frame of each result, labelled with its PSNR and seam score, and a
zoom on a seam crossing of the base grid (where naive tiles show their edges).

Frames are [N, H, W, 3] float in [0, 1]; pictures are written with Pillow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.plan import PatchPlan

from .pixel_eval import STRIDE

# (key in the frames dict, title); "lr" is shown enlarged with nearest neighbour, so its pixels show.
# Two rows of four: the references on top (the tiny VAE's own ceiling among them: no latent method can
# look better than the HR clip through it), the sampler's start and the three stitches below.
PANELS = (
    ("lr", "LR input (nearest)"),
    ("bicubic", "bicubic (pixels)"),
    ("vae_hr", "HR through the tiny VAE (ceiling)"),
    ("hr", "HR reference"),
    ("vae_bicubic", "sampler's start (t0 = 0)"),
    ("naive", "naive tiles"),
    ("weighted", "weighted joint modulation (paper)"),
    ("shifted", "shifted grid (pack default)"),
)
ZOOM = 4  # enlargement of the seam crop
CROP = 48  # pixels around the seam crossing


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except (TypeError, OSError):
        return ImageFont.load_default()


def _nearest(frame: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    ky, kx = hw[0] // frame.shape[0], hw[1] // frame.shape[1]
    return frame.repeat(ky, axis=0).repeat(kx, axis=1)


def crossing(plan: PatchPlan) -> tuple[int, int]:
    """(y, x) in pixels of the base grid's first interior corner: four naive tiles meet there."""
    rows, cols = plan.row_edges, plan.col_edges
    y = rows[1] if len(rows) > 2 else rows[-1] // 2
    x = cols[1] if len(cols) > 2 else cols[-1] // 2
    return y * STRIDE, x * STRIDE


def side_by_side(
    frames: dict[str, np.ndarray], scores: dict[str, dict[str, float]], plan: PatchPlan, path: Path, index: int = 2
) -> Path:
    """Writes the picture: the panels in two rows of four, then a row of seam zooms."""
    from PIL import Image, ImageDraw

    hr = frames["hr"][index]
    H, W, _ = hr.shape
    label_h, pad = 40, 6
    panels = [(k, t) for k, t in PANELS if k in frames]
    cols = 4
    rows = (len(panels) + cols - 1) // cols
    zoom_px = CROP * ZOOM
    zoom_cols = len(panels)
    width = max(cols * (W + pad) + pad, zoom_cols * (zoom_px // 2 + pad) + pad)
    zoom_w = (width - pad) // zoom_cols - pad
    height = rows * (H + label_h + pad) + pad + zoom_w + label_h + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font, small = _font(15), _font(13)
    cy, cx = crossing(plan)
    y0, x0 = max(0, min(H - CROP, cy - CROP // 2)), max(0, min(W - CROP, cx - CROP // 2))
    for i, (key, title) in enumerate(panels):
        f = frames[key][index]
        if key == "lr":
            f = _nearest(f, (H, W))
        img = Image.fromarray(np.round(np.clip(f, 0, 1) * 255).astype(np.uint8))
        r, c = divmod(i, cols)
        px, py = pad + c * (W + pad), pad + r * (H + label_h + pad)
        canvas.paste(img, (px, py + label_h))
        s = scores.get(key)
        sub = "" if key in ("lr", "hr") or s is None else f"PSNR {s['psnr']:.2f} dB   seam {s['seam']:.2f}"
        if key == "hr" and s is not None:
            sub = f"seam {s['seam']:.2f} (1.00 = no seams)"
        draw.text((px, py + 2), title, fill=(0, 0, 0), font=font)
        draw.text((px, py + 21), sub, fill=(60, 60, 60), font=small)
        draw.rectangle([px + x0, py + label_h + y0, px + x0 + CROP, py + label_h + y0 + CROP], outline=(255, 40, 40))
        # The zoom row: the crop around the seam crossing, enlarged (nearest, so pixels stay pixels).
        crop = img.crop((x0, y0, x0 + CROP, y0 + CROP)).resize((zoom_w, zoom_w), Image.NEAREST)
        zx, zy = pad + i * (zoom_w + pad), rows * (H + label_h + pad) + pad + label_h
        canvas.paste(crop, (zx, zy))
        draw.text((zx, zy - 18), title.split(" (")[0], fill=(0, 0, 0), font=small)
    zy = rows * (H + label_h + pad) + pad
    draw.text((pad, zy - 2), "", fill=(0, 0, 0), font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)
    return path


def zoom_only(frames: dict[str, np.ndarray], plan: PatchPlan, path: Path, index: int = 2) -> Path:
    """The seam-crossing zoom alone (for the README), panels side by side."""
    from PIL import Image

    H, W, _ = frames["hr"][index].shape
    cy, cx = crossing(plan)
    y0, x0 = max(0, min(H - CROP, cy - CROP // 2)), max(0, min(W - CROP, cx - CROP // 2))
    tiles = []
    for key, _ in PANELS:
        if key not in frames:
            continue
        f = frames[key][index]
        if key == "lr":
            f = _nearest(f, (H, W))
        tiles.append(np.clip(f[y0 : y0 + CROP, x0 : x0 + CROP], 0, 1).repeat(ZOOM // 2, 0).repeat(ZOOM // 2, 1))
    gap = np.ones((tiles[0].shape[0], 4, 3))
    row = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(row * 255).astype(np.uint8)).save(path, optimize=True)
    return path


def save_frames(frames: dict[str, np.ndarray], folder: Path, index: int = 2) -> None:
    """One PNG per result (frame `index`), named by its label."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for key, f in frames.items():
        Image.fromarray(np.round(np.clip(f[index], 0, 1) * 255).astype(np.uint8)).save(folder / f"{key}.png")
