"""The one-patch equivalence: with a plan whose single patch is the whole frame (and one temporal window), the
PatchVSR sampler gives what ComfyUI's own SamplerCustom gives for the same model, conditioning, seed, cfg,
sampler and noise levels, to float precision. This pins that PatchVSR samples the way core does: cfg, the
time convention (sigma to the DiT's timestep), the noise, its mixing with the latent at t0 < 1, and the LoRA.

Both run in one prompt per sampler on the real server, from pure noise (t0 = 1.0) and from the noised start
(t0 = 0.6, with the noise levels the pack computes for it, handed to SamplerCustom as a SIGMAS made afresh
for each sampler node: core's uni_pc writes into the SIGMAS it is given), at cfg 1 and 3, with and without a
LoRA (the pack's lora_name widget against core's LoraLoaderModelOnly), on random text tokens that differ
between positive and negative so cfg matters."""

import json

import pytest
from harness.tiny_models import DIT, LORA_NAME

pytestmark = pytest.mark.integration
SAMPLERS = ("euler", "heun", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc", "res_multistep", "lcm", "ddim")
CFGS = (1.0, 3.0)
T0S = (1.0, 0.6)
LORAS = (None, f"{LORA_NAME}.safetensors")
STEPS = 6
SEED = 7
# Float precision of the DiT's output against core's run on identical inputs: the pack crops the one patch
# (a view), stacks it, runs the same DiT call and divides the fused sum by a weight of 1, so every value is
# the same float. Measured: 0 difference for every case on both hosts.
TOLERANCE = 1e-6


def equivalence_prompt(sampler: str) -> tuple[dict, dict]:
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": f"{DIT.name}.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "PatchVSRTest_RandomTextConditioning", "inputs": {"tokens": 8, "seed": 1}},
        "3": {"class_type": "PatchVSRTest_RandomTextConditioning", "inputs": {"tokens": 8, "seed": 2}},
        # A 2-latent-frame (5-frame) clip of 24 x 32 px at 2x: one 48 x 64 px patch (6 x 8 cells) is the frame.
        "4": {"class_type": "PatchVSRTest_RandomLatent", "inputs": {"channels": 16, "frames": 2, "height": 3, "width": 4, "seed": 0}},
        "5": {"class_type": "PatchVSR_Partitioner", "inputs": {
            "model": ["1", 0], "latent": ["4", 0], "target": "scale", "scale": 2.0, "keep_aspect": True,
            "patch_width": 64, "patch_height": 48, "window_frames": 0}},
        "6": {"class_type": "PatchVSRTest_RandomLatent", "inputs": {"channels": 16, "frames": 2, "height": 6, "width": 8, "seed": 1}},
        "7": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": LORAS[1], "strength_model": 1.0}},
        "8": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}},
    }  # fmt: skip
    cases = {}
    for cfg in CFGS:
        for t0 in T0S:
            for lora in LORAS:
                n = 100 + 10 * len(cases)
                core_model = ["7", 0] if lora else ["1", 0]
                prompt[str(n)] = {"class_type": "PatchVSR_Sampler", "inputs": {
                    "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent": ["6", 0], "plan": ["5", 0],
                    "lora_name": lora or "None", "lora_strength": 1.0, "seed": SEED, "steps": STEPS, "cfg": cfg,
                    "sampler_name": sampler, "scheduler": "simple", "t0": t0, "patch_batch": 0}}  # fmt: skip
                prompt[str(n + 1)] = {"class_type": "PatchVSRTest_T0Sigmas", "inputs": {
                    "model": core_model, "scheduler": "simple", "steps": STEPS, "t0": t0}}  # fmt: skip
                prompt[str(n + 2)] = {"class_type": "SamplerCustom", "inputs": {
                    "model": core_model, "add_noise": True, "noise_seed": SEED, "cfg": cfg, "positive": ["2", 0],
                    "negative": ["3", 0], "sampler": ["8", 0], "sigmas": [str(n + 1), 0], "latent_image": ["6", 0]}}  # fmt: skip
                tag = f"{sampler} cfg {cfg:g} t0 {t0:g} lora {'yes' if lora else 'no'}"
                prompt[str(n + 3)] = {"class_type": "PatchVSRTest_LatentDiff", "inputs": {
                    "samples": [str(n), 0], "reference": [str(n + 2), 0], "tag": tag}}  # fmt: skip
                cases[str(n + 3)] = tag
    return prompt, cases


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_one_patch_sampler_is_core_sampling(server, sampler):
    # ComfyUI keeps node outputs between prompts; the run must sample, not come back from the cache.
    server.clear_cache()
    prompt, cases = equivalence_prompt(sampler)
    result = server.run(prompt)
    assert result.status == "success", json.dumps(result.error)[:3000]
    worst = []
    for node, tag in cases.items():
        (stats,) = result.outputs[node]["patchvsr_diff"]
        assert stats["tag"] == tag and stats["shape"] == [1, 16, 2, 6, 8], stats
        worst.append((stats["max_abs_diff"], tag, stats["ref_max_abs"]))
    print("\n".join(f"{tag}: max |PatchVSR - SamplerCustom| = {d:.3g} (output up to {r:.3g})" for d, tag, r in worst))
    bad = [(d, tag) for d, tag, r in worst if not d <= TOLERANCE * max(1.0, r)]
    assert not bad, bad
