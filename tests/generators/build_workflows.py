"""Authoring tool for the files in workflows/: writes UI-format workflow JSON from a compact graph
description, with inputs, outputs and widget order taken from a running server's /object_info.

    cd tests && ../.venv/bin/python -m generators.build_workflows   # starts a test server, rewrites workflows/*.json

The shipped JSON files are the source of truth the tests run; this only saves hand-editing them.
"""

from __future__ import annotations

import json
from dataclasses import replace

from harness.paths import REPO, WORK
from harness.runs import INPUT_CLIP
from harness.workflow import _extra_slots, _inputs, _is_widget

# Model file names as the Comfy-Org repackaged Wan 2.1 files are called in an artist's install, with where
# ComfyUI's frontend can download them from when they are missing (the `models` property of a loader node,
# as ComfyUI's own templates carry it).
WAN_DIT = "wan2.1_t2v_1.3B_fp16.safetensors"
WAN_VAE = "wan_2.1_vae.safetensors"
WAN_TEXT = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
REPACKAGED = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
MODEL_FILES = {
    WAN_DIT: ("diffusion_models", f"{REPACKAGED}/diffusion_models/{WAN_DIT}"),
    WAN_VAE: ("vae", f"{REPACKAGED}/vae/{WAN_VAE}"),
    WAN_TEXT: ("text_encoders", f"{REPACKAGED}/text_encoders/{WAN_TEXT}"),
}
POSITIVE = "a detailed, sharp, high resolution video"
NEGATIVE = "blurry, low resolution, compression artifacts, oversmoothed, static"
# A step-distillation LoRA for Wan 2.1 T2V 1.3B as the artist saves it in models/loras (e.g. CausVid's, whose
# licence is CC BY-NC 4.0: non-commercial; the note says to pick one's own).
DISTILL_LORA = "Wan21_CausVid_bidirect2_T2V_1_3B_lora_rank32.safetensors"
MODEL_FILES[DISTILL_LORA] = ("loras", f"https://huggingface.co/Kijai/WanVideo_comfy/resolve/main/{DISTILL_LORA}")


def build(graph: list[dict], object_info: dict, note: str) -> dict:
    """graph: [{id, type, pos, widgets: {name: value}, links: {input: (node id, output slot)}}]."""
    nodes, links = [], []
    by_id = {g["id"]: g for g in graph}
    out_links: dict[tuple[int, int], list[int]] = {}
    for g in graph:
        for name, (src, slot) in g.get("links", {}).items():
            links.append([len(links) + 1, src, slot, g["id"], name, None])
            out_links.setdefault((src, slot), []).append(len(links))
    for order, g in enumerate(graph):
        info = object_info[g["type"]]
        inputs, values = [], []
        for name, spec in _inputs(info):
            link_ids = [lk[0] for lk in links if lk[3] == g["id"] and lk[4] == name]
            typ = "COMBO" if isinstance(spec[0], list) else spec[0]
            if _is_widget(spec):
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if name in g.get("widgets", {}):
                    value = g["widgets"][name]
                elif "default" in opts:
                    value = opts["default"]
                elif isinstance(spec[0], list):
                    value = spec[0][0] if spec[0] else ""
                else:  # V3 combos list their options in the dict
                    value = opts.get("options", [""])[0]
                values.append(value)
                if opts.get("control_after_generate"):
                    values.append("fixed")
                if _extra_slots(spec) > (1 if opts.get("control_after_generate") else 0):
                    values.append("image")  # the upload button's stored value
                if link_ids:
                    inputs.append({"name": name, "type": typ, "widget": {"name": name}, "link": link_ids[0]})
            else:
                inputs.append({"name": name, "type": typ, "link": link_ids[0] if link_ids else None})
        outputs = [
            {"name": oname, "type": otype, "links": out_links.get((g["id"], i), []), "slot_index": i}
            for i, (oname, otype) in enumerate(zip(info["output_name"], info["output"]))
        ]
        properties = {"Node name for S&R": g["type"]}
        files = [v for v in g.get("widgets", {}).values() if isinstance(v, str) and v in MODEL_FILES]
        if files:
            properties["models"] = [
                {"name": f, "url": MODEL_FILES[f][1], "directory": MODEL_FILES[f][0]} for f in files
            ]
        nodes.append({
            "id": g["id"], "type": g["type"], "pos": list(g["pos"]), "size": list(g.get("size", [320, 160])),
            "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": properties, "widgets_values": values, **({"title": g["title"]} if "title" in g else {}),
        })  # fmt: skip
    # Links carry their type and the target's slot index, as the frontend saves them.
    for lk in links:
        src, slot, dst, name = lk[1], lk[2], lk[3], lk[4]
        lk[5] = object_info[by_id[src]["type"]]["output"][slot]
        dst_node = next(n for n in nodes if n["id"] == dst)
        lk[4] = next(i for i, inp in enumerate(dst_node["inputs"]) if inp["name"] == name)
    note_id = max(g["id"] for g in graph) + 1
    nodes.append({
        "id": note_id, "type": "MarkdownNote", "pos": [20, -420], "size": [760, 380], "flags": {}, "order": len(nodes),
        "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [note], "title": "About this workflow",
    })  # fmt: skip
    return {
        "last_node_id": note_id, "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [],
        "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4,
    }  # fmt: skip


def loaders() -> list[dict]:
    return [
        {"id": 1, "type": "UNETLoader", "pos": [20, 0], "widgets": {"unet_name": WAN_DIT}},
        {"id": 2, "type": "VAELoader", "pos": [20, 200], "widgets": {"vae_name": WAN_VAE}},
        {"id": 3, "type": "CLIPLoader", "pos": [20, 330], "widgets": {"clip_name": WAN_TEXT, "type": "wan"}},
        {"id": 4, "type": "CLIPTextEncode", "pos": [380, 280], "title": "Positive", "widgets": {"text": POSITIVE}, "links": {"clip": (3, 0)}},
        {"id": 5, "type": "CLIPTextEncode", "pos": [380, 480], "title": "Negative", "widgets": {"text": NEGATIVE}, "links": {"clip": (3, 0)}},
    ]  # fmt: skip


def patchvsr_chain(
    src: dict, target: str, fps_link, stitch: str = "shifted", sampler: dict | None = None, model=(1, 0)
) -> list[dict]:
    """The five PatchVSR nodes after a source: src maps 'images' or 'latent' to (node, slot)."""
    sampler = sampler or {"steps": 20, "cfg": 5.0, "t0": 0.3}
    return [
        {"id": 20, "type": "PatchVSR_Partitioner", "pos": [760, 0], "widgets": {"target": target}, "links": {"model": model, **src}},
        {"id": 21, "type": "PatchVSR_UpscaleEncode", "pos": [1120, 0], "links": {"plan": (20, 0), "vae": (2, 0), **src}},
        {"id": 22, "type": "PatchVSR_GlobalContext", "pos": [1120, 220], "links": {"plan": (20, 0), "vae": (2, 0), **src}},
        {"id": 23, "type": "PatchVSR_Stitcher", "pos": [1120, 470], "widgets": {"mode": stitch}, "links": {"plan": (20, 0)}},
        {"id": 24, "type": "PatchVSR_Sampler", "pos": [1480, 0], "size": [340, 420], "widgets": sampler,
         "links": {"model": model, "positive": (4, 0), "negative": (5, 0), "latent": (21, 0), "plan": (20, 0), "context": (22, 0), "stitcher": (23, 0)}},
        {"id": 25, "type": "PatchVSR_Decode", "pos": [1860, 0], "links": {"samples": (24, 0), "vae": (2, 0)}},
        {"id": 26, "type": "CreateVideo", "pos": [2200, 0], "links": {"images": (25, 0), **fps_link}},
        {"id": 27, "type": "SaveVideo", "pos": [2200, 200], "widgets": {"filename_prefix": f"PatchVSR/{target}", "format": "mp4", "codec": "h264"}, "links": {"video": (26, 0)}},
        {"id": 28, "type": "PreviewImage", "pos": [760, 560], "title": "Patch grid", "links": {"images": (20, 1)}},
    ]  # fmt: skip


def from_video(target: str) -> list[dict]:
    return loaders() + [
        {"id": 10, "type": "LoadVideo", "pos": [380, 0], "widgets": {"file": INPUT_CLIP}},
        {"id": 11, "type": "GetVideoComponents", "pos": [380, 140], "links": {"video": (10, 0)}},
    ] + patchvsr_chain({"images": (11, 0)}, target, {"fps": (11, 2)})  # fmt: skip


def fast_4k() -> list[dict]:
    """4K in 6 steps at cfg 1 with a step-distillation LoRA through the core loader, shifted-grid stitch."""
    few = {"steps": 6, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "t0": 0.3}
    return loaders() + [
        {"id": 6, "type": "LoraLoaderModelOnly", "pos": [20, 470], "title": "Step-distillation LoRA",
         "widgets": {"lora_name": DISTILL_LORA, "strength_model": 1.0}, "links": {"model": (1, 0)}},
        {"id": 10, "type": "LoadVideo", "pos": [380, 0], "widgets": {"file": INPUT_CLIP}},
        {"id": 11, "type": "GetVideoComponents", "pos": [380, 140], "links": {"video": (10, 0)}},
    ] + patchvsr_chain({"images": (11, 0)}, "4K", {"fps": (11, 2)}, sampler=few, model=(6, 0))  # fmt: skip


def from_t2v() -> list[dict]:
    return loaders() + [
        {"id": 10, "type": "EmptyHunyuanLatentVideo", "pos": [380, 0], "title": "Wan T2V size",
         "widgets": {"width": 832, "height": 480, "length": 81, "batch_size": 1}},
        {"id": 11, "type": "KSampler", "pos": [380, 640], "title": "Wan T2V sampler", "size": [320, 300],
         "widgets": {"seed": 42, "steps": 30, "cfg": 5.0, "sampler_name": "uni_pc", "scheduler": "simple", "denoise": 1.0},
         "links": {"model": (1, 0), "positive": (4, 0), "negative": (5, 0), "latent_image": (10, 0)}},
    ] + patchvsr_chain({"latent": (11, 0)}, "2K", {})  # fmt: skip


def long_video_4k() -> list[dict]:
    """A whole shot to 4K chunk by chunk: Load Video straight into the long-video node, its file to Save Video."""
    return loaders() + [
        {"id": 10, "type": "LoadVideo", "pos": [380, 0], "widgets": {"file": INPUT_CLIP}},
        {"id": 30, "type": "PatchVSR_LongVideo", "pos": [760, 0], "size": [380, 980],
         "widgets": {"target": "4K", "steps": 20, "cfg": 5.0, "t0": 0.3, "filename_prefix": "PatchVSR/long"},
         "links": {"video": (10, 0), "model": (1, 0), "vae": (2, 0), "positive": (4, 0), "negative": (5, 0)}},
        {"id": 31, "type": "SaveVideo", "pos": [1180, 0], "widgets": {"filename_prefix": "PatchVSR/4K_long", "format": "mp4", "codec": "h264"},
         "links": {"video": (30, 0)}},
    ]  # fmt: skip


MODELS_NOTE = (
    f"**Models**: `{WAN_DIT}` in models/diffusion_models, `{WAN_VAE}` in models/vae, `{WAN_TEXT}` in "
    "models/text_encoders (ComfyUI offers to download the missing ones; or pick your own Wan 2.1 T2V files in "
    "the three loaders)."
)
EXPECT_NOTE = (
    "While it runs: the **Patch Partitioner** shows the plan it made for your clip (patches, DiT patch "
    "evaluations per step and per run, a memory estimate) and **Patch grid** its patches (base solid blue, "
    "bridging dashed, the shifted stitch's moved grid white dotted); the **PatchVSR Sampler** shows a live preview "
    "of the whole frame (set a preview method in ComfyUI's settings or start it with `--preview-method auto`) "
    "and its progress bar counts patches."
)
# The clips the notes' figures are for: 16:9 footage for the file workflows, Wan 2.1's own 832x480 for the
# T2V chain. Another aspect ratio keeps its own inside the preset frame, and the partitioner shows its plan.
NOTE_CLIPS = {"video": (720, 1280), "t2v": (480, 832)}
NOTE_FRAMES = 81


def note_plan(target: str, clip: str):
    """The plan the workflow's partitioner makes for the note's clip: the same functions the node runs."""
    from models.plan import Geometry, target_hw, video_plan

    lr = NOTE_CLIPS[clip]
    out = target_hw(lr, target, 2.0, True, 8)
    ph, pw = min(480, out[0]), min(832, out[1])  # Wan 2.1's native patch (patch size 0)
    return video_plan(Geometry("wan2.1", 16, 8, lr, out, (ph, pw), NOTE_FRAMES), 81)


def plan_note(target: str, clip: str, steps: int, cfg: float) -> str:
    """What the note says the run costs: every number from the plan the partitioner makes."""
    from models.blend import StitchConfig, StitchMode
    from models.cost import token_ratio, total_evaluations
    from models.plan import Kind

    plan = note_plan(target, clip)
    g = plan.geometry
    rows, cols = len(plan.row_edges) - 1, len(plan.col_edges) - 1
    ph, pw = max(b.height for b in plan.base_boxes()) * 8, max(b.width for b in plan.base_boxes()) * 8
    shifted, weighted = StitchConfig(StitchMode.SHIFTED), StitchConfig(StitchMode.WEIGHTED)
    lr = NOTE_CLIPS[clip]
    return (
        f"For a {lr[1]}x{lr[0]} clip of {NOTE_FRAMES} frames: {g.target_hw[1]}x{g.target_hw[0]}, {cols} x {rows} "
        f"patches of up to {pw}x{ph} px; {steps} steps at cfg {cfg:g} with the 'shifted' stitch run "
        f"{total_evaluations(plan, shifted, steps, cfg)} patch evaluations ({token_ratio(plan, shifted, steps):.2f}x "
        f"the frame's DiT tokens per step). The paper's 'weighted' scheme is one widget away (**Latent Stitcher** "
        f"mode): {plan.count(Kind.BASE) + len(plan.aux_boxes())} patches per step with the bridging ones, "
        f"{total_evaluations(plan, weighted, steps, cfg)} evaluations ({token_ratio(plan, weighted, steps):.2f}x)."
    )


def long_note(steps: int, cfg: float) -> str:
    """What the long-video workflow costs, from the chunk layout and the plans its node makes."""
    from models.blend import StitchConfig
    from models.cost import total_evaluations
    from models.long_video import chunk_layout, decode_peak_bytes, slice_frames
    from models.plan import video_plan

    base = note_plan("4K", "video")
    g = base.geometry

    def evaluations(frames: int) -> int:
        layout = chunk_layout(frames, NOTE_FRAMES, 3)
        plans = [video_plan(replace(g, frames=c.frames), NOTE_FRAMES) for c in layout.chunks]
        return sum(total_evaluations(p, StitchConfig(), steps, cfg) for p in plans)

    lr = NOTE_CLIPS["video"]
    shot, long = 24 * 10, 24 * 120
    ram = decode_peak_bytes(slice_frames(32), g.target_hw) / 1e9  # the node's default decode_temporal_frames
    return (
        f"For a {lr[1]}x{lr[0]} clip at 24 fps: {g.target_hw[1]}x{g.target_hw[0]}, chunks of {NOTE_FRAMES} frames "
        f"sharing 9 (chunk_overlap 3): a 10 s shot ({shot} frames) runs {len(chunk_layout(shot, NOTE_FRAMES, 3).chunks)} "
        f"chunks and {evaluations(shot)} patch evaluations at {steps} steps, cfg {cfg:g}; a 2-minute one "
        f"{len(chunk_layout(long, NOTE_FRAMES, 3).chunks)} chunks, {evaluations(long)} evaluations (one {NOTE_FRAMES}-frame "
        f"chunk costs what the 4K workflow's {NOTE_FRAMES}-frame clip does: {total_evaluations(base, StitchConfig(), steps, cfg)}). "
        f"GPU memory is one chunk's, whatever the length; in RAM, ComfyUI's tiled decode of one slice of a 4K "
        f"chunk peaks at about {ram:.0f} GB (**decode_temporal_frames** 16 roughly halves it)."
    )


def notes() -> dict[str, str]:
    return {
        "patchvsr_2k_from_video.json": (
            "## PatchVSR: video file to 2K\n"
            f"{MODELS_NOTE} Put your clip (1 + 4k frames, e.g. 81; longer clips run in overlapping windows) in "
            "ComfyUI's input folder and pick it in **Load Video**.\n\n"
            "**Expect** output/PatchVSR/2K_*.mp4 at 2560x1440 (another aspect ratio keeps its own inside it), with "
            f"the clip's frame count and fps. {plan_note('2K', 'video', 20, 5.0)} {EXPECT_NOTE}\n\n"
            "Raise **t0** for more new detail, lower it for more fidelity; **Global Context** strength keeps colour "
            "consistent across patches."
        ),
        "patchvsr_4k_from_video.json": (
            "## PatchVSR: video file to 4K\n"
            f"{MODELS_NOTE} Put your clip in ComfyUI's input folder and pick it in **Load Video**.\n\n"
            f"**Expect** output/PatchVSR/4K_*.mp4 at 3840x2160. {plan_note('4K', 'video', 20, 5.0)} Tiled encode "
            f"and decode keep memory bounded. {EXPECT_NOTE}"
        ),
        "patchvsr_4k_fast.json": (
            "## PatchVSR: video file to 4K, fast\n"
            f"{MODELS_NOTE} Pick a step-distillation LoRA for your Wan model in **Step-distillation LoRA** (4-8 "
            "steps; the one named, CausVid's, is licensed for non-commercial use only), and your clip in **Load "
            "Video**.\n\n"
            f"**Expect** output/PatchVSR/4K_*.mp4 at 3840x2160. {plan_note('4K', 'video', 6, 1.0)} The 'shifted' "
            "stitch runs one patch grid per step, its borders moved between steps, the last step's cells centred "
            f"on the base grid's seams. At cfg 1 the negative prompt is not used. {EXPECT_NOTE}"
        ),
        "patchvsr_long_video_4k.json": (
            "## PatchVSR: a whole shot to 4K, chunk by chunk\n"
            f"{MODELS_NOTE} Put your clip (any length and frame count) in ComfyUI's input folder and pick it in "
            "**Load Video**.\n\n"
            "**When**: shots longer than one model window (81 frames, about 3 s), up to minutes. The other "
            "workflows hold the whole clip in memory (a 4K frame is 100 MB as ComfyUI's IMAGE); **PatchVSR Long "
            "Video** reads, denoises, decodes and writes one chunk at a time, and keeps finished chunks on disk: "
            "a cancelled, crashed or killed run resumes from its first missing chunk when you queue it again with "
            "the same settings (the seed stays fixed).\n\n"
            "**Expect** output/PatchVSR/long_<clip>_<key>.mp4 at 3840x2160 with the source's frame count, exact "
            f"frame rate and sound, and Save Video's copy as PatchVSR/4K_long_*.mp4. {long_note(20, 5.0)} The node "
            "shows the chunk it works on, one progress bar for the whole video and the live preview."
        ),
        "patchvsr_t2v_to_2k.json": (
            "## Wan T2V straight into PatchVSR\n"
            f"{MODELS_NOTE} Write your prompt in **Positive**; **Wan T2V size** and **Wan T2V sampler** make the "
            "832x480 clip, whose latent goes to PatchVSR without a round trip through a video file.\n\n"
            f"**Expect** output/PatchVSR/2K_*.mp4 after the T2V run. {plan_note('2K', 't2v', 20, 5.0)} Upscale & "
            "Encode decodes, upscales and re-encodes the latent (exact); set latent_mode to 'latent bicubic' for "
            f"the fast path. {EXPECT_NOTE}"
        ),
    }


def main() -> None:
    import sys

    from harness.server import ComfyServer
    from harness.tiny_models import ensure_in_subprocess

    sys.path.insert(0, str(REPO))  # the pure-PyTorch models package, for the notes' costs
    models = ensure_in_subprocess(WORK / "models")
    with ComfyServer(WORK / "build-workflows", models, with_test_nodes=False) as server:
        info = server.object_info()
    graphs = {
        "patchvsr_2k_from_video.json": from_video("2K"),
        "patchvsr_4k_from_video.json": from_video("4K"),
        "patchvsr_t2v_to_2k.json": from_t2v(),
        "patchvsr_4k_fast.json": fast_4k(),
        "patchvsr_long_video_4k.json": long_video_4k(),
    }
    for name, graph in graphs.items():
        path = REPO / "workflows" / name
        path.write_text(json.dumps(build(graph, info, notes()[name]), indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
