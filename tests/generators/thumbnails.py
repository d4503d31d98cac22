"""Template thumbnails: for each workflow in workflows/, a same-name .jpg that ComfyUI's templates browser
shows (it asks for /api/workflow_templates/<pack>/<name>.jpg). For now the plan preview the workflow's
partitioner draws, over a synthetic 16:9 frame, with the workflow's title; real before/after frames replace
them once trained tiny models can make a picture worth showing.

    cd tests && ../.venv/bin/python -m generators.thumbnails   # rewrites workflows/*.jpg
"""

from __future__ import annotations

import json
import sys

import numpy as np
from harness.paths import REPO

SIZE = (512, 288)  # w, h: 16:9 like the clips the workflows take
TITLES = {
    "patchvsr_2k_from_video": "Video to 2K",
    "patchvsr_4k_from_video": "Video to 4K",
    "patchvsr_4k_fast": "Video to 4K, fast",
    "patchvsr_t2v_to_2k": "Wan T2V to 2K",
    "patchvsr_long_video_4k": "a whole shot to 4K",
}


def synthetic_frame(h: int, w: int) -> np.ndarray:
    """[h, w, 3] in [0, 1]: soft, dark colour bands, so the plan's lines stand out."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / h
    bands = np.stack([np.sin(x * 2.1), np.sin(y * 2.7 + 1.0), np.sin((x + y) * 1.3 + 2.0)], -1)
    return 0.22 + 0.12 * bands


def thumbnail(workflow: dict, title: str):
    import torch
    from PIL import Image, ImageDraw, ImageFont

    from models.plan import PlanConfig, make_plan
    from models.preview import plan_picture

    # The partitioner's target, or the long-video node's (its first widget too).
    (part,) = [n for n in workflow["nodes"] if n["type"] in ("PatchVSR_Partitioner", "PatchVSR_LongVideo")]
    target = part["widgets_values"][0]
    h, w = {"2K": (1440, 2560), "4K": (2160, 3840)}[target]
    plan = make_plan(PlanConfig((1, h // 8, w // 8), (60, 104), 21))  # Wan 2.1's 832x480 patches
    frame = torch.from_numpy(synthetic_frame(SIZE[1], SIZE[0]))
    img = Image.fromarray((plan_picture(frame, plan).clamp(0, 1).numpy() * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=28)
    label = f"PatchVSR: {title}"
    box = draw.textbbox((12, 12), label, font=font)
    draw.rectangle((box[0] - 6, box[1] - 6, box[2] + 6, box[3] + 6), fill=(20, 30, 50))
    draw.text((12, 12), label, font=font, fill=(255, 255, 255))
    return img


def main() -> None:
    sys.path.insert(0, str(REPO))  # the pure-PyTorch models package
    for path in sorted((REPO / "workflows").glob("*.json")):
        out = path.with_suffix(".jpg")
        thumbnail(json.loads(path.read_text()), TITLES[path.stem]).save(out, quality=85, optimize=True)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
