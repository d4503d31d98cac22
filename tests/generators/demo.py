"""The main job, headless: the shipped 2K workflow through a real ComfyUI server on the tiny models trained
here (harness/trained.py), on a held-out clip, with a side-by-side picture of the results.

    bash .ci/demo                       # trained tiny models, 17-frame held-out clip, 2x: mp4 + side-by-side PNG + seam zoom
    bash .ci/demo --full-2k             # also the workflow at its 2K preset on the trained models (slower)
    bash .ci/demo workflows/patchvsr_t2v_to_2k.json --frames 5 --steps 2    # any shipped workflow, trained models
    bash .ci/demo --random              # the 2K workflow as shipped, random tiny models, synthetic clip

The comparison runs the 2K workflow's graph with its partitioner's target switched from the 2K preset to
`scale` 2 (so an HR reference exists: the held-out photograph is sharper than 2K only at that size) and one
sampler per stitch mode; each result is decoded by the server and measured in pixels against HR.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from harness.paths import REPO, WORK
from harness.runs import INPUT_CLIP, tiny_prompt
from harness.server import ComfyServer
from harness.tiny_models import ensure_in_subprocess
from harness.trained import DIT_NAME, VAE_NAME, install
from harness.workflow import override

DEFAULT_WORKFLOW = REPO / "workflows" / "patchvsr_2k_from_video.json"
MODES = {"naive": {"mode": "naive"}, "weighted": {"mode": "weighted"}, "shifted": {"mode": "shifted"}}
# Frames when --frames is not given: the comparison makes a one-second video (16 fps; 90 s on the idle 2-core
# machine); the 2K preset and the random models keep 5, since their full-size decode dominates the time.
COMPARE_FRAMES, OTHER_FRAMES = 17, 5


def compare(server, args) -> int:
    from harness import figures, pixel_eval

    cfg = pixel_eval.CompareConfig(
        frames=args.frames or COMPARE_FRAMES, steps=max(args.steps, 4), patch_px=args.patch, t0=args.t0
    )
    frames, videos = pixel_eval.run_compare(server, cfg, MODES)
    plan = pixel_eval.plan_of(cfg)
    scores = pixel_eval.measures(plan, frames)
    print(pixel_eval.table(scores), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    png = figures.side_by_side(frames, scores, plan, args.out / "patchvsr_demo_frame.png", index=cfg.frames // 2)
    zoom = figures.zoom_only(frames, plan, args.out / "patchvsr_demo_seam_zoom.png", index=cfg.frames // 2)
    (args.out / "patchvsr_demo_scores.json").write_text(json.dumps(scores, indent=1))
    figures.save_frames(frames, args.out / "frames", index=cfg.frames // 2)  # for generators/demo_thumbnails.py
    print(f"wrote {png.resolve()}\nwrote {zoom.resolve()}")
    for video in videos:
        dest = args.out / f"{DEFAULT_WORKFLOW.stem}_x2_shifted.mp4"
        shutil.copy2(video, dest)
        print(f"wrote {dest.resolve()}")
    return 0 if videos else 1


def plain(server, workflow: Path, args, lr_clip: str | None) -> int:
    """The shipped workflow as it is (2K preset etc.), on the trained models; the input is the held-out LR
    clip."""
    from harness import pixel_eval
    from harness.proof import write_mp4

    frames = args.frames or OTHER_FRAMES
    _, lr = pixel_eval.heldout_pair(pixel_eval.CompareConfig(frames=frames))
    write_mp4(server.input_dir / INPUT_CLIP, lr)
    prompt = tiny_prompt(workflow, server.object_info(), steps=args.steps, t2v_size=(256, 144, frames))
    prompt = override(prompt, "UNETLoader", unet_name=f"{DIT_NAME}.safetensors")
    prompt = override(prompt, "VAELoader", vae_name=f"{VAE_NAME}.safetensors")
    kinds = {n["class_type"] for n in prompt.values()}
    if "PatchVSR_Partitioner" in kinds:
        prompt = override(prompt, "PatchVSR_Partitioner", patch_width=args.patch, patch_height=args.patch)
    if "PatchVSR_Sampler" in kinds:
        prompt = override(prompt, "PatchVSR_Sampler", cfg=1.0, t0=args.t0)
    print(f"running {workflow.name} on the trained tiny models through {server.url} ...", flush=True)
    return run_and_copy(server, prompt, args.out / f"{workflow.stem}.mp4")


def random_models(workflow: Path, models: Path, args) -> int:
    """The 2K (or any) workflow as shipped on the random tiny models and a synthetic clip: proves the
    pipeline runs, the video shows coloured noise."""
    from harness.runs import make_clip

    base = WORK / "demo-server"
    shutil.rmtree(base / "output", ignore_errors=True)
    started = time.monotonic()
    with ComfyServer(base, models) as server:
        frames = args.frames or OTHER_FRAMES
        make_clip(server.input_dir / INPUT_CLIP, frames=frames)
        prompt = tiny_prompt(workflow, server.object_info(), steps=args.steps, t2v_size=(256, 144, frames))
        print(f"running {workflow.name} on the tiny models through {server.url} ...", flush=True)
        code = run_and_copy(server, prompt, args.out / f"{workflow.stem}.mp4")
    print(f"finished in {time.monotonic() - started:.0f} s")
    return code


def run_and_copy(server: ComfyServer, prompt: dict, dest: Path) -> int:
    """Runs `prompt` and copies the video it saved to `dest`; the exit status (1 on an error or no video)."""
    result = server.run(prompt)
    if result.status != "success":
        print(f"workflow {result.status}: {json.dumps(result.error, indent=1)[:4000]}", file=sys.stderr)
        return 1
    videos = result.files(server.output_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for video in videos:
        shutil.copy2(video, dest)
        print(f"wrote {dest.resolve()}")
    return 0 if videos else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflow", nargs="?", type=Path, default=DEFAULT_WORKFLOW)
    parser.add_argument("--out", type=Path, default=REPO / "output", help="folder the mp4 and PNGs are written to")
    parser.add_argument(
        "--frames",
        type=int,
        help=f"frames of the clip (1 + 4k; default {COMPARE_FRAMES} for the comparison, {OTHER_FRAMES} otherwise)",
    )
    parser.add_argument("--steps", type=int, default=2, help="sampling steps (at least 4 for the comparison)")
    parser.add_argument("--t0", type=float, default=0.3, help="the sampler's start time (SDEdit strength)")
    parser.add_argument("--patch", type=int, default=128, help="patch size in pixels (the tiny DiT's native 128)")
    parser.add_argument("--full-2k", action="store_true", help="also the 2K workflow at its preset")
    parser.add_argument(
        "--random", action="store_true", help="random tiny models and a synthetic clip (proves the pipeline only)"
    )
    parser.add_argument("--compare", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old notes
    args = parser.parse_args(argv)
    workflow = args.workflow if args.workflow.is_absolute() else (Path.cwd() / args.workflow)
    if not workflow.exists():
        workflow = REPO / args.workflow
    models = ensure_in_subprocess(WORK / "models")
    if args.random:
        return random_models(workflow, models, args)
    install(models)
    sys.path.insert(0, str(REPO))  # the pack's pure-PyTorch `models` package (plans, for the measures)
    base = WORK / "demo-server"
    shutil.rmtree(base / "output", ignore_errors=True)
    started = time.monotonic()
    with ComfyServer(base, models) as server:
        if workflow.resolve() == DEFAULT_WORKFLOW.resolve():
            rc = compare(server, args)
            if rc == 0 and args.full_2k:
                rc = plain(server, workflow, args, None)
        else:
            rc = plain(server, workflow, args, None)
    print(f"demo finished in {time.monotonic() - started:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
