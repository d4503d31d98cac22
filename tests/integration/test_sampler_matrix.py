"""Every ComfyUI sampler with representative schedulers, at 4 and 20 steps from t0 0.5, through the PatchVSR
sampler node in the real server on the tiny Wan DiT, on a 2 x 2 plan with the default (shifted) stitch, so
the step lookup of multi-evaluation samplers and the grid rotation run. A block-0 recorder logs every DiT
call; each run must:
- run on the pack's own noise levels from t0 (computed here with the host's scheduler and models/flow.py);
- evaluate the model only between t0 and 0, at every level but the last for samplers that step on the
  schedule (dpm_fast and dpm_adaptive choose their own levels inside it);
- run at every evaluation exactly the patches of the layout of the step its noise level falls in, each once
  per evaluation (Heun-type corrections on the next level belong to the next step);
- come back finite and changed from the start latent.

One prompt per sampler holds its scheduler x steps combinations, so the server's set-up is paid once per
sampler. The one-patch equivalence to core sampling is tests/integration/test_equivalence.py."""

import json
import os
from collections import Counter

import pytest
from harness.inprocess import wan_schedule
from harness.tiny_models import DIT

from models.blend import StitchConfig
from models.flow import sigmas_from_t0
from models.joint import FusionSchedule, step_index
from models.plan import PlanConfig, make_plan

pytestmark = pytest.mark.integration
STEPS = (4, 20)
SCHEDULERS = ("simple", "beta", "karras")  # the shipped default, a bell-shaped one, and one from diffusion
T0 = 0.5
WAN_SHIFT = 8.0  # ComfyUI's model sampling for Wan 2.1 T2V, which the tiny DiT is detected as
OWN_LEVELS = {"dpm_fast", "dpm_adaptive"}  # k-diffusion's own step-size control between sigma_max and sigma_min
ONLY = [s for s in os.environ.get("PATCHVSR_MATRIX_SAMPLERS", "").split(",") if s]  # to rerun a few by hand
# The tests' 2 x 2 plan: a 2-latent-frame clip at 96 x 128 px (12 x 16 cells), 48 x 64 px patches.
PLAN = make_plan(PlanConfig((2, 12, 16), (6, 8), 21))


def combo_options(object_info, node: str, name: str) -> list[str]:
    """A combo input's options as the server lists them (V1: [options, {...}], V3: ["COMBO", {"options"}])."""
    kind, *rest = object_info[node]["input"]["required"][name]
    return rest[0]["options"] if kind == "COMBO" else kind


def matrix_prompt(sampler: str) -> tuple[dict, dict]:
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": f"{DIT.name}.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "PatchVSRTest_RandomTextConditioning", "inputs": {"tokens": 8, "seed": 1}},
        "3": {"class_type": "PatchVSRTest_RandomTextConditioning", "inputs": {"tokens": 8, "seed": 2}},
        "4": {"class_type": "PatchVSRTest_RandomLatent", "inputs": {"channels": 16, "frames": 2, "height": 6, "width": 8, "seed": 0}},
        "5": {"class_type": "PatchVSR_Partitioner", "inputs": {
            "model": ["1", 0], "latent": ["4", 0], "target": "scale", "scale": 2.0, "keep_aspect": True,
            "patch_width": 64, "patch_height": 48, "window_frames": 0}},
        "6": {"class_type": "PatchVSRTest_RandomLatent", "inputs": {"channels": 16, "frames": 2, "height": 12, "width": 16, "seed": 1}},
    }  # fmt: skip
    runs = {}
    for scheduler in SCHEDULERS:
        for steps in STEPS:
            n = 100 + 10 * len(runs)
            tag = f"matrix_{sampler}_{scheduler}_{steps}"
            prompt[str(n)] = {"class_type": "PatchVSRTest_EvalRecorder", "inputs": {"model": ["1", 0], "tag": tag}}
            prompt[str(n + 1)] = {"class_type": "PatchVSR_Sampler", "inputs": {
                "model": [str(n), 0], "positive": ["2", 0], "negative": ["3", 0], "latent": ["6", 0], "plan": ["5", 0],
                "lora_name": "None", "lora_strength": 1.0, "seed": 0, "steps": steps, "cfg": 1.5,
                "sampler_name": sampler, "scheduler": scheduler, "t0": T0, "patch_batch": 0}}  # fmt: skip
            prompt[str(n + 2)] = {"class_type": "PatchVSRTest_LatentDiff", "inputs": {
                "samples": [str(n + 1), 0], "reference": ["6", 0], "tag": tag}}  # fmt: skip
            runs[str(n + 2)] = (scheduler, steps, tag)
    return prompt, runs


def check_run(sampler: str, scheduler: str, steps: int, calls: list[dict], stats: dict) -> list[str]:
    """What is wrong with one run, from its recorded DiT calls and its output's distance to the start."""
    where = f"{sampler} / {scheduler} / {steps} steps"
    want = sigmas_from_t0(lambda n: wan_schedule(scheduler, WAN_SHIFT, n), steps, T0).double().tolist()
    if not calls:
        return [f"{where}: the DiT never ran"]
    levels = calls[0]["levels"]
    # Core's uni_pc writes 0.001 into the last level of the schedule it is given (it cannot step to 0).
    last = (0.0, 0.001) if sampler.startswith("uni_pc") else (0.0,)
    if len(levels) != steps + 1 or any(abs(a - b) > 1e-6 for a, b in zip(levels[:-1], want[:-1])):
        return [f"{where}: ran on levels {levels}, the pack's schedule from t0 is {want}"]
    problems = []
    if not any(abs(levels[-1] - v) < 1e-9 for v in last):
        problems.append(f"{where}: last level {levels[-1]}")
    schedule = FusionSchedule.build(PLAN, StitchConfig(), None)
    # Consecutive calls at one noise level are one evaluation (or, for Heun-type samplers, the correction
    # of one step and the next step's first evaluation: both run that level's layout).
    groups: list[tuple[float, Counter]] = []
    for call in calls:
        sig = set(call["sigmas"])
        assert len(sig) == 1, f"{where}: one DiT call mixes noise levels {sig}"
        s = sig.pop()
        patches = Counter(tuple(p) for p in call["patches"])
        rows = call["rows"] // max(1, len(call["patches"]))
        patches = Counter({p: n * rows for p, n in patches.items()})  # cond and uncond rows of each patch
        if groups and abs(groups[-1][0] - s) < 1e-9:
            groups[-1][1].update(patches)
        else:
            groups.append((s, patches))
    for s, seen in groups:
        if not -1e-6 <= s <= T0 + 1e-6:
            problems.append(f"{where}: an evaluation at sigma {s}, outside [0, t0 = {T0}]")
            continue
        layout = schedule.at(step_index(s, levels), steps)
        expected = Counter((w.t0, w.t1, b.y0, b.y1, b.x0, b.x1) for batch in layout.batches for w, b in batch)
        times = {seen[p] / expected[p] for p in expected} if set(seen) == set(expected) else set()
        if len(times) != 1 or not float(next(iter(times))).is_integer():
            problems.append(f"{where}: at sigma {s:.4f} (step {step_index(s, levels)}) ran {dict(seen)}, "
                            f"the step's layout is {sorted(expected)}")  # fmt: skip
    if sampler not in OWN_LEVELS:
        evaluated = [s for s, _ in groups]
        missed = [v for v in levels[:-1] if not any(abs(v - s) < 1e-6 for s in evaluated)]
        if missed:
            problems.append(f"{where}: no evaluation at levels {missed}")
    if not stats["max_abs_diff"] > 1e-2 * stats["ref_max_abs"] or stats["max_abs_diff"] == float("inf"):
        problems.append(f"{where}: output barely changed from the start ({stats})")
    return problems


def test_every_sampler_steps_the_pack_schedule(small_op_server):
    server = small_op_server
    samplers = combo_options(server.object_info(), "PatchVSR_Sampler", "sampler_name")
    assert "euler" in samplers and "uni_pc" in samplers
    failures, tried = [], 0
    for sampler in [s for s in samplers if not ONLY or s in ONLY]:
        prompt, runs = matrix_prompt(sampler)
        for _, _, tag in runs.values():
            (server.output_dir / f"{tag}.jsonl").unlink(missing_ok=True)
        result = server.run(prompt)
        if result.status != "success":
            failures.append(f"{sampler}: {result.error.get('exception_message', json.dumps(result.error)[:300])}")
            continue
        for node, (scheduler, steps, tag) in runs.items():
            (stats,) = result.outputs[node]["patchvsr_diff"]
            lines = (server.output_dir / f"{tag}.jsonl").read_text().splitlines()
            failures += check_run(sampler, scheduler, steps, [json.loads(line) for line in lines], stats)
            tried += 1
    print(f"sampler matrix: {tried} runs of {len(samplers) * len(SCHEDULERS) * len(STEPS)}")
    assert not failures, "\n".join(failures)
