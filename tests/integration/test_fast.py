"""The few-step 4K workflow (issue 10, item 3): a step-distillation LoRA through the core loader, cfg 1,
the shifted-grid stitch. On the tiny model the run completes and the DiT sees exactly the patches of each
step's grid, once: steps x patches evaluations, no uncond rows at cfg 1."""

import json

import pytest
from harness.paths import REPO
from harness.runs import tiny_prompt

from models.blend import StitchConfig, StitchMode
from models.joint import FusionSchedule
from models.plan import PlanConfig, make_plan

pytestmark = pytest.mark.integration
STEPS = 4


def test_fast_4k_workflow_costs_steps_times_patches(server, object_info):
    prompt = tiny_prompt(REPO / "workflows" / "patchvsr_4k_fast.json", object_info, steps=STEPS)
    (sid,) = [k for k, n in prompt.items() if n["class_type"] == "PatchVSR_Sampler"]
    assert prompt[sid]["inputs"]["cfg"] == 1.0
    (stitch,) = [n for n in prompt.values() if n["class_type"] == "PatchVSR_Stitcher"]
    assert stitch["inputs"]["mode"] == "shifted"
    # The decode and save are the browser test's; here the sampler's latent is enough. The rows do not depend
    # on the pictures: the start latent is encoded through the CheapVAE test node (ComfyUI's VAE around a
    # pooling network; the random tiny VAE's 4K encode alone was 60-150 s of CPU).
    for k in [k for k, n in prompt.items() if n["class_type"] in ("PatchVSR_Decode", "CreateVideo", "SaveVideo")]:
        del prompt[k]
    (vae,) = [k for k, n in prompt.items() if n["class_type"] == "VAELoader"]
    for node in prompt.values():
        node["inputs"].update({k: ["902", 0] for k, v in node["inputs"].items() if v == [vae, 0]})
    prompt["902"] = {"class_type": "PatchVSRTest_CheapVAE", "inputs": {"vae": [vae, 0]}}
    prompt["901"] = {"class_type": "PatchVSRTest_LatentStats", "inputs": {"samples": [sid, 0]}}
    # Count the rows of every DiT call: a block-0 patch on the model the sampler gets (after the LoRA).
    prompt["900"] = {"class_type": "PatchVSRTest_RowCounter", "inputs": {"model": prompt[sid]["inputs"]["model"], "tag": "fast_rows"}}  # fmt: skip
    prompt[sid]["inputs"]["model"] = ["900", 0]
    counts = server.output_dir / "fast_rows.txt"
    counts.unlink(missing_ok=True)
    result = server.run(prompt)
    assert result.status == "success", json.dumps(result.error)[:3000]
    assert result.outputs["901"]["patchvsr_stats"][0]["finite"]
    rows = [int(n) for n in counts.read_text().split()]
    # The 4K plan of a 1-frame clip: 3840x2160 px, 832x480 px patches (latent cells / 8).
    plan = make_plan(PlanConfig((1, 270, 480), (60, 104), 21))
    schedule = FusionSchedule.build(plan, StitchConfig(StitchMode.SHIFTED), 1)
    expected = sum(len(b) for i in range(STEPS) for b in schedule.at(i, STEPS).batches)
    print(f"fast 4K: {len(rows)} DiT calls, {sum(rows)} rows over {STEPS} steps; expected {expected}")
    assert sum(rows) == expected, (sum(rows), expected)
