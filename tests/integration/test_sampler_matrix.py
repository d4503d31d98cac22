"""Every ComfyUI sampler with every scheduler, at 4, 20 and 50 steps from t0 0.3 and 1.0, through the PatchVSR
sampler node in the real server on the tiny Wan DiT: no exception, no non-finite value.

One prompt per sampler holds its scheduler x steps x t0 combinations (54 sampler nodes sharing one plan and
latent), so the server's set-up is paid once per sampler. Tiny latent: one 64 x 48 px patch (6 x 8 cells), the
cond and uncond rows in one DiT call. The patch-wise fusion itself is tested elsewhere; this is about the
schedule and ComfyUI's samplers."""

import json
import os

import pytest
from harness.tiny_models import DIT

pytestmark = pytest.mark.integration
STEPS = tuple(int(s) for s in os.environ.get("PATCHVSR_MATRIX_STEPS", "4,20,50").split(","))
T0S = (0.3, 1.0)
ONLY = [s for s in os.environ.get("PATCHVSR_MATRIX_SAMPLERS", "").split(",") if s]  # to rerun a few by hand


def combo_options(object_info, node: str, name: str) -> list[str]:
    """A combo input's options as the server lists them (V1: [options, {...}], V3: ["COMBO", {"options"}])."""
    kind, *rest = object_info[node]["input"]["required"][name]
    return rest[0]["options"] if kind == "COMBO" else kind


def sampler_names(object_info) -> list[str]:
    return combo_options(object_info, "PatchVSR_Sampler", "sampler_name")


def scheduler_names(object_info) -> list[str]:
    return combo_options(object_info, "PatchVSR_Sampler", "scheduler")


def matrix_prompt(sampler: str, schedulers: list[str]) -> tuple[dict, dict]:
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": f"{DIT.name}.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "PatchVSRTest_ZeroTextConditioning", "inputs": {"tokens": 8}},
        "3": {"class_type": "PatchVSRTest_RandomLatent", "inputs": {"channels": 16, "frames": 1, "height": 3, "width": 4, "seed": 0}},
        "4": {"class_type": "PatchVSR_Partitioner", "inputs": {
            "model": ["1", 0], "latent": ["3", 0], "target": "scale", "scale": 2.0, "keep_aspect": True,
            "patch_width": 64, "patch_height": 48, "window_frames": 0}},
        "5": {"class_type": "PatchVSRTest_RandomLatent", "inputs": {"channels": 16, "frames": 1, "height": 6, "width": 8, "seed": 1}},
    }  # fmt: skip
    combos = {}
    for scheduler in schedulers:
        for steps in STEPS:
            for t0 in T0S:
                sid, oid = str(100 + 2 * len(combos)), str(101 + 2 * len(combos))
                prompt[sid] = {"class_type": "PatchVSR_Sampler", "inputs": {
                    "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "latent": ["5", 0], "plan": ["4", 0],
                    "lora_name": "None", "lora_strength": 1.0, "seed": 0, "steps": steps, "cfg": 1.5,
                    "sampler_name": sampler, "scheduler": scheduler, "t0": t0, "patch_batch": 64}}  # fmt: skip
                prompt[oid] = {"class_type": "PatchVSRTest_LatentStats", "inputs": {"samples": [sid, 0]}}
                combos[oid] = (sampler, scheduler, steps, t0)
    return prompt, combos


def test_every_sampler_and_scheduler_runs_finite(small_op_server):
    server = small_op_server
    object_info = server.object_info()
    samplers, schedulers = sampler_names(object_info), scheduler_names(object_info)
    assert "euler" in samplers and "uni_pc" in samplers and "simple" in schedulers
    failures, tried = [], 0
    for sampler in [s for s in samplers if not ONLY or s in ONLY]:
        prompt, combos = matrix_prompt(sampler, schedulers)
        result = server.run(prompt)
        if result.status != "success":
            node = result.error.get("node_id")
            failures.append(
                f"{combos.get(str(int(node) + 1)) if node else sampler}: {result.error.get('exception_message', json.dumps(result.error)[:300])}"
            )
            continue
        for oid, combo in combos.items():
            (stats,) = result.outputs[oid]["patchvsr_stats"]
            tried += 1
            if not stats["finite"]:
                failures.append(f"{combo}: non-finite output")
    print(f"sampler matrix: {tried} runs finite of {len(samplers) * len(schedulers) * len(STEPS) * len(T0S)}")
    assert not failures, "\n".join(failures)
