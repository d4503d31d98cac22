"""A thumbnail per shipped workflow (workflows/NAME.jpg beside workflows/NAME.json) from the demo's output:
the held-out frame split down the middle, LR input (nearest) on the left and the pack's result on the
right, with the workflow's name. Made from the tiny models trained here (tests/tiny), not from a real Wan.

    bash .ci/demo                                  # writes output/frames/*.png
    cd tests && ../.venv/bin/python -m generators.demo_thumbnails [--frames ../output/frames] [--size 320 180]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.paths import REPO


def title_of(workflow: Path) -> str:
    """The workflow's first Markdown note heading, or its file name."""
    try:
        nodes = json.loads(workflow.read_text()).get("nodes", [])
    except (OSError, json.JSONDecodeError):
        return workflow.stem
    for node in nodes:
        if node.get("type") in ("MarkdownNote", "Note"):
            text = (node.get("widgets_values") or [""])[0]
            first = text.strip().splitlines()[0] if text.strip() else ""
            if first.startswith("#"):
                return first.lstrip("#").strip()
    return workflow.stem


def thumbnail(lr: Path, result: Path, title: str, size: tuple[int, int]):
    from PIL import Image, ImageDraw, ImageFont

    right = Image.open(result).convert("RGB")
    left = Image.open(lr).convert("RGB").resize(right.size, Image.NEAREST)
    w, h = right.size
    frame = right.copy()
    frame.paste(left.crop((0, 0, w // 2, h)), (0, 0))
    draw = ImageDraw.Draw(frame)
    draw.line([(w // 2, 0), (w // 2, h)], fill=(255, 255, 255), width=2)
    # Crop to the thumbnail's aspect, then scale.
    tw, th = size
    if w / h > tw / th:
        nw = round(h * tw / th)
        frame = frame.crop(((w - nw) // 2, 0, (w - nw) // 2 + nw, h))
    else:
        nh = round(w * th / tw)
        frame = frame.crop((0, (h - nh) // 2, w, (h - nh) // 2 + nh))
    frame = frame.resize((tw, th), Image.LANCZOS)
    draw = ImageDraw.Draw(frame)
    try:
        font = ImageFont.load_default(size=max(10, th // 12))
    except (TypeError, OSError):
        font = ImageFont.load_default()
    bar = max(14, th // 8)
    draw.rectangle([0, th - bar, tw, th], fill=(0, 0, 0))
    draw.text((4, th - bar + 1), title, fill=(255, 255, 255), font=font)
    draw.text((4, 3), "input", fill=(255, 255, 255), font=font)
    draw.text((tw // 2 + 4, 3), "PatchVSR", fill=(255, 255, 255), font=font)
    return frame


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=Path, default=REPO / "output" / "frames", help="the demo's frames folder")
    parser.add_argument("--size", type=int, nargs=2, default=(320, 180), metavar=("W", "H"))
    parser.add_argument("--result", default="shifted", help="which result to show (a file in --frames)")
    args = parser.parse_args(argv)
    lr, result = args.frames / "lr.png", args.frames / f"{args.result}.png"
    for p in (lr, result):
        if not p.exists():
            raise SystemExit(f"{p} is missing: run `bash .ci/demo` first")
    for workflow in sorted((REPO / "workflows").glob("*.json")):
        out = workflow.with_suffix(".jpg")
        thumbnail(lr, result, title_of(workflow), tuple(args.size)).save(out, quality=85, optimize=True)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
