"""The sampler among other extensions, in the real server: another node's block patch still runs with the
adapter's (composed, not overwritten), guidance extensions see ComfyUI's cond/uncond batch order inside the
DiT, conditioning made for the whole frame is refused by name, every seed the widget allows works, and a
patch batch that runs out of memory is retried with half as many patches."""

import json

import pytest
import torch
from harness.tiny_models import ADAPTERS, DIT, VAE
from test_adapter_server import latents
from test_validation import error_text

pytestmark = pytest.mark.integration


def graph(model=("1", 0), adapter: bool = False, sampler: str = "euler", seed: int = 3, save: str = "hooks") -> dict:
    """A tiny patch-wise run without a VAE: 9 patches in one DiT batch, positive and negative text differ,
    cfg 2 (cond and uncond rows in one batch)."""
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": f"{DIT.name}.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "PatchVSRTest_ZeroTextConditioning", "inputs": {"tokens": 8, "value": 0.5}},
        "3": {"class_type": "PatchVSRTest_ZeroTextConditioning", "inputs": {"tokens": 8, "value": -0.5}},
        "4": {"class_type": "PatchVSRTest_RandomLatent", "inputs": {"channels": 16, "frames": 1, "height": 6, "width": 8, "seed": 0}},
        "5": {"class_type": "PatchVSR_Partitioner", "inputs": {
            "model": list(model), "latent": ["4", 0], "target": "scale", "scale": 2.0, "keep_aspect": True,
            "patch_width": 64, "patch_height": 48, "window_frames": 0}},
        "6": {"class_type": "PatchVSRTest_RandomLatent", "inputs": {"channels": 16, "frames": 1, "height": 12, "width": 16, "seed": 1}},
        "7": {"class_type": "PatchVSR_Sampler", "inputs": {
            "model": list(model), "positive": ["2", 0], "negative": ["3", 0], "latent": ["6", 0], "plan": ["5", 0],
            "lora_name": "None", "lora_strength": 1.0, "seed": seed, "steps": 3, "cfg": 2.0, "sampler_name": sampler,
            "scheduler": "simple", "t0": 0.6, "patch_batch": 64}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": f"latents/{save}"}},
    }  # fmt: skip
    if adapter:
        # The adapter path needs the global context; without a VAE here, a random latent stands in for it.
        prompt["7"]["inputs"]["adapter"] = ["20", 0]
        prompt["7"]["inputs"]["context"] = ["21", 0]
        prompt["20"] = {"class_type": "PatchVSR_AdapterLoader", "inputs": {"model": list(model), "adapter_name": f"{ADAPTERS['a']}.safetensors"}}  # fmt: skip
        prompt["21"] = {"class_type": "PatchVSR_GlobalContext", "inputs": {
            "plan": ["5", 0], "vae": ["22", 0], "latent": ["4", 0], "strength": 0.0, "noise_t": 0.15, "seed": seed}}  # fmt: skip
        prompt["22"] = {"class_type": "VAELoader", "inputs": {"vae_name": f"{VAE.name}.safetensors"}}
    return prompt


def with_probe(prompt: dict, scale: float) -> dict:
    """The same graph on a model that another extension patched (block 0 replaced, batch order checked)."""
    prompt = json.loads(json.dumps(prompt))
    prompt["30"] = {"class_type": "PatchVSRTest_BlockProbe", "inputs": {"model": ["1", 0], "scale": scale}}
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if value == ["1", 0] and node["class_type"] != "PatchVSRTest_BlockProbe":
                node["inputs"][name] = ["30", 0]
    return prompt


def run_latent(server, prompt):
    return latents(server, server.run(prompt))


def test_guidance_extensions_see_comfyuis_batch_order(server):
    # The probe raises inside the DiT if any cond/uncond chunk holds the other's rows.
    for adapter in (False, True):
        result = server.run(with_probe(graph(adapter=adapter, save=f"order{adapter}"), 1.0))
        assert result.status == "success", json.dumps(result.error)[:2000]


def test_another_extensions_block_patch_composes_with_the_adapter(server):
    plain = run_latent(server, graph(adapter=True, save="compose_plain"))
    probed = run_latent(server, with_probe(graph(adapter=True, save="compose_probe"), 0.5))
    (a,), (b,) = plain.values(), probed.values()
    # Had the adapter's block patch replaced the probe's, block 0 would not be scaled and both would match.
    assert (a - b).abs().max() > 1e-3, "the other extension's block patch was dropped by the adapter's"


@pytest.mark.parametrize("sampler", ["euler", "ddim", "dpmpp_2m_sde"])
def test_every_seed_the_widget_allows(server, sampler):
    for adapter in (False, True):
        prompt = graph(adapter=adapter, sampler=sampler, seed=0xFFFFFFFFFFFFFFFF, save=f"seed{sampler}{adapter}")
        result = server.run(prompt)
        assert result.status == "success", json.dumps(result.error)[:2000]


def test_image_to_video_conditioning_is_refused_by_name(server):
    prompt = graph()
    prompt["40"] = {"class_type": "VAELoader", "inputs": {"vae_name": f"{VAE.name}.safetensors"}}
    prompt["41"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0}}
    prompt["42"] = {"class_type": "WanImageToVideo", "inputs": {
        "positive": ["2", 0], "negative": ["3", 0], "vae": ["40", 0], "width": 64, "height": 48, "length": 1,
        "batch_size": 1, "start_image": ["41", 0]}}  # fmt: skip
    prompt["7"]["inputs"]["positive"] = ["42", 0]
    msg = error_text(server.run(prompt))
    assert "positive: this conditioning carries a start image latent" in msg and "CLIP Text Encode" in msg, msg


def test_reference_latent_conditioning_is_refused_by_name(server):
    prompt = graph()
    prompt["43"] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["3", 0], "latent": ["4", 0]}}
    prompt["7"]["inputs"]["negative"] = ["43", 0]
    msg = error_text(server.run(prompt))
    assert "negative: this conditioning carries reference latents" in msg, msg


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m"])
def test_shifted_grid_runs_with_multistep_samplers(server, sampler):
    """The shifted-grid stitch picks each evaluation's grid from its noise level: 2nd-order and multistep
    samplers, cond and uncond rows in one batch (batch order probed inside the DiT), with and without the
    adapter (whose location masks must cover the shifted boxes, which are not the plan's); its result is
    not the weighted scheme's."""
    out = {}
    for adapter in (False, True):
        for mode in ("shifted", "weighted"):
            prompt = with_probe(graph(adapter=adapter, sampler=sampler, save=f"shift{sampler}{adapter}{mode}"), 1.0)
            prompt["7"]["inputs"]["steps"] = 4
            prompt["7"]["inputs"]["stitcher"] = ["40", 0]
            prompt["40"] = {"class_type": "PatchVSR_Stitcher", "inputs": {"mode": mode, "blend_weight": 5.0}}
            (out[adapter, mode],) = run_latent(server, prompt).values()
        assert out[adapter, "shifted"].isfinite().all()
        assert (out[adapter, "shifted"] - out[adapter, "weighted"]).abs().max() > 1e-4


@pytest.mark.parametrize("patch_batch", [0, 4])
def test_out_of_memory_in_a_patch_batch_halves_it_and_keeps_the_run(server, patch_batch):
    """The DiT runs out of memory once, on its first call of more than one patch (cond and uncond rows): the
    sampler retries that call with half as many patches, and the result is that of an uninterrupted run.
    patch_batch 0 sizes the batch from the device's free memory (on this CPU server: all patches of a size),
    4 is the artist's fixed size."""
    out, tag = {}, f"oom{patch_batch}"
    for oom in (False, True):
        prompt = graph(save=f"{tag}{oom}")
        prompt["7"]["inputs"]["patch_batch"] = patch_batch
        prompt["7"]["inputs"]["stitcher"] = ["40", 0]
        prompt["40"] = {"class_type": "PatchVSR_Stitcher", "inputs": {"mode": "weighted", "blend_weight": 5.0}}
        if oom:
            prompt["50"] = {"class_type": "PatchVSRTest_OutOfMemoryOnce", "inputs": {"model": ["1", 0], "above": 2, "tag": tag}}  # fmt: skip
            prompt["5"]["inputs"]["model"] = prompt["7"]["inputs"]["model"] = ["50", 0]
        (out[oom],) = run_latent(server, prompt).values()
    calls = (server.output_dir / f"{tag}.txt").read_text().split("\n")
    (failed,) = [i for i, line in enumerate(calls) if line.startswith("oom")]
    rows = int(calls[failed].split()[1])
    # 9 patches of one size, 2 rows each (cfg 2): the failed call had 9 (automatic) or 4 patches.
    assert rows == 2 * (9 if patch_batch == 0 else 4), calls
    assert int(calls[failed + 1]) == 2 * (rows // 2 // 2), calls  # retried with half as many patches
    assert max(int(line) for line in calls[failed + 1 :] if line) <= 2 * (rows // 2 // 2), calls
    torch.testing.assert_close(out[True], out[False], atol=1e-5, rtol=1e-5)
