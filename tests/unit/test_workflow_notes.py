"""The shipped workflows' notes state what the workflow really runs: each file carries the note the
generator (generators/build_workflows.py) makes from the plan its partitioner makes for the note's clip (the
node's own planning functions), for the steps, cfg and stitch its nodes hold; and every model file a loader
names comes with its download address, as ComfyUI's own templates carry it."""

import json
import re

import pytest
from generators.build_workflows import MODEL_FILES, note_plan, notes
from harness.paths import REPO

from models.plan import Kind

pytestmark = pytest.mark.pure  # the pack's pure-PyTorch core: one host runs it (.ci/test)


def widgets(workflow: dict, node_type: str) -> list:
    (node,) = [n for n in workflow["nodes"] if n["type"] == node_type]
    return node["widgets_values"]


LONG = "patchvsr_long_video_4k.json"
# PatchVSR Long Video's widgets in the order the workflow file stores them (its schema's: required, then
# optional).
LONG_WIDGETS = (
    "target", "scale", "keep_aspect", "patch_width", "patch_height", "window_frames", "seed", "steps", "cfg",
    "sampler_name", "scheduler", "t0", "patch_batch", "lora_name", "lora_strength", "strength", "noise_t",
    "encode_tile_px", "decode_tile_px", "decode_overlap_px", "decode_temporal_frames", "decode_temporal_overlap",
    "chunk_overlap", "crf", "filename_prefix", "anchor_with_adapter",
)  # fmt: skip


@pytest.mark.parametrize("name", sorted(set(notes()) - {LONG}))
def test_note_states_the_plan_the_workflow_makes(name):
    workflow = json.loads((REPO / "workflows" / name).read_text())
    (note,) = widgets(workflow, "MarkdownNote")
    assert note == notes()[name], f"{name}: regenerate it (cd tests && python -m generators.build_workflows)"
    target, _, keep_aspect, patch_w, patch_h, window = widgets(workflow, "PatchVSR_Partitioner")
    assert keep_aspect and (patch_w, patch_h, window) == (0, 0, 0)  # native patches: what the note plans
    assert widgets(workflow, "PatchVSR_Stitcher")[0] == "shifted"
    _, _, _, _, steps, cfg, *_ = widgets(workflow, "PatchVSR_Sampler")
    stated = re.search(r"(\d+) steps at cfg ([\d.]+)", note)
    assert (int(stated[1]), float(stated[2])) == (steps, cfg), (stated[0], steps, cfg)
    clip = "t2v" if "t2v" in name else "video"
    plan = note_plan(target, clip)
    g = plan.geometry
    rows, cols = len(plan.row_edges) - 1, len(plan.col_edges) - 1
    assert f"{g.target_hw[1]}x{g.target_hw[0]}, {cols} x {rows} patches" in note
    assert f"{plan.count(Kind.BASE) + len(plan.aux_boxes())} patches per step with the bridging ones" in note


def test_long_video_note_states_the_chunks_and_plan_its_node_makes():
    workflow = json.loads((REPO / "workflows" / LONG).read_text())
    (note,) = widgets(workflow, "MarkdownNote")
    assert note == notes()[LONG], f"{LONG}: regenerate it (cd tests && python -m generators.build_workflows)"
    values = widgets(workflow, "PatchVSR_LongVideo")
    assert len(values) == len(LONG_WIDGETS), "the node's widgets changed: update LONG_WIDGETS"
    w = dict(zip(LONG_WIDGETS, values))
    # Native patches and window, 3 latent frames shared, the default stitch: what the note plans.
    assert (w["target"], w["keep_aspect"], w["patch_width"], w["patch_height"], w["window_frames"]) == (
        "4K",
        True,
        0,
        0,
        0,
    )
    assert w["chunk_overlap"] == 3 and "sharing 9 (chunk_overlap 3)" in note
    stated = re.search(r"(\d+) steps, cfg ([\d.]+)", note)
    assert (int(stated[1]), float(stated[2])) == (w["steps"], w["cfg"]), stated[0]
    g = note_plan("4K", "video").geometry
    assert f"{g.target_hw[1]}x{g.target_hw[0]}, chunks of 81 frames" in note
    assert "runs 4 chunks" in note and "40 chunks" in note  # 240 and 2880 frames, a new chunk every 72


@pytest.mark.parametrize("name", sorted(notes()))
def test_loaders_carry_their_download_addresses(name):
    workflow = json.loads((REPO / "workflows" / name).read_text())
    for node in workflow["nodes"]:
        named = [v for v in node.get("widgets_values", []) if isinstance(v, str) and v.endswith(".safetensors")]
        listed = {m["name"]: m for m in node["properties"].get("models", [])}
        assert set(named) == set(listed), (node["type"], named, listed)
        for file in named:
            directory, url = MODEL_FILES[file]
            assert listed[file] == {"name": file, "url": url, "directory": directory}
            assert url.startswith("https://huggingface.co/") and url.endswith(f"/{file}")
