"""The main job, headless: runs a shipped workflow through a real ComfyUI server on the tiny models and
copies the video it writes to an output folder.

    bash .ci/demo                                   # the 2K workflow, output in ./output/
    bash .ci/demo workflows/patchvsr_t2v_to_2k.json --frames 5 --steps 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from .build_workflows import INPUT_CLIP
from .paths import REPO, WORK
from .runs import make_clip, tiny_prompt
from .server import ComfyServer
from .tiny_models import ensure_in_subprocess


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflow", nargs="?", type=Path, default=REPO / "workflows" / "patchvsr_2k_from_video.json")
    parser.add_argument("--out", type=Path, default=REPO / "output", help="folder the mp4 is copied to")
    parser.add_argument("--frames", type=int, default=5, help="frames of the synthetic input clip (1 + 4k)")
    parser.add_argument("--steps", type=int, default=2, help="sampling steps (the tiny models need no more)")
    args = parser.parse_args(argv)
    workflow = args.workflow if args.workflow.is_absolute() else (Path.cwd() / args.workflow)
    if not workflow.exists():
        workflow = REPO / args.workflow
    models = ensure_in_subprocess(WORK / "models")
    base = WORK / "demo-server"
    shutil.rmtree(base / "output", ignore_errors=True)
    started = time.monotonic()
    with ComfyServer(base, models) as server:
        make_clip(server.input_dir / INPUT_CLIP, frames=args.frames)
        prompt = tiny_prompt(workflow, server.object_info(), steps=args.steps, t2v_size=(256, 144, args.frames))
        print(f"running {workflow.name} on the tiny models through {server.url} ...", flush=True)
        result = server.run(prompt)
        if result.status != "success":
            print(f"workflow {result.status}: {json.dumps(result.error, indent=1)[:4000]}", file=sys.stderr)
            return 1
        videos = result.files(server.output_dir)
        args.out.mkdir(parents=True, exist_ok=True)
        for video in videos:
            dest = args.out / f"{workflow.stem}.mp4"
            shutil.copy2(video, dest)
            print(f"wrote {dest.resolve()} in {time.monotonic() - started:.0f} s")
    return 0 if videos else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
