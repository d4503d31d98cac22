"""Bad inputs through the real server: clear errors naming the input, the value and the fix."""

import json

import pytest
from harness.paths import REPO
from harness.runs import tiny_prompt
from harness.workflow import override

pytestmark = pytest.mark.integration
WORKFLOW = REPO / "workflows" / "patchvsr_2k_from_video.json"


def small(object_info, **partitioner):
    prompt = tiny_prompt(WORKFLOW, object_info)
    prompt = override(prompt, "LoadVideo", file="clip_5f.mp4")
    defaults = {"target": "scale", "scale": 2.0, "patch_width": 128, "patch_height": 80}
    return override(prompt, "PatchVSR_Partitioner", **(defaults | partitioner))


def error_text(result) -> str:
    assert result.status == "error", f"expected an execution error, got {result.status}"
    return result.error.get("exception_message", "") + json.dumps(result.error.get("node_type", ""))


def test_small_scale_run_keeps_frames(server, object_info):
    result = server.run(small(object_info))
    assert result.status == "success", json.dumps(result.error)[:2000]


def test_frames_not_1_plus_4k(server, object_info):
    prompt = override(small(object_info), "LoadVideo", file="clip_4f.mp4")
    msg = error_text(server.run(prompt))
    assert "images: 4 frames" in msg and "1 + 4k" in msg and "5" in msg, msg


def test_patch_larger_than_target(server, object_info):
    msg = error_text(server.run(small(object_info, patch_width=1024, patch_height=80)))
    assert "patch_width: 1024 px is larger than the target's 256 px" in msg, msg


def test_patch_not_on_token_grid(server, object_info):
    msg = error_text(server.run(small(object_info, patch_width=120, patch_height=80)))
    assert "patch_width: 120 px is not a multiple of 16" in msg, msg


def test_latent_that_does_not_match_plan(server, object_info):
    prompt = small(object_info)
    # A second partitioner with another scale feeds the sampler a plan the latent was not made for.
    part = next(k for k, n in prompt.items() if n["class_type"] == "PatchVSR_Partitioner")
    prompt["900"] = json.loads(json.dumps(prompt[part]))
    prompt["900"]["inputs"]["scale"] = 3.0
    sampler = next(n for n in prompt.values() if n["class_type"] == "PatchVSR_Sampler")
    sampler["inputs"]["plan"] = ["900", 0]
    msg = error_text(server.run(prompt))
    assert "latent: shape" in msg and "Connect the latent from PatchVSR Upscale & Encode" in msg, msg


def test_cancel_stops_the_sampler_and_server_keeps_serving(server, object_info):
    prompt = override(small(object_info), "PatchVSR_Sampler", steps=200)
    sampler = next(k for k, n in prompt.items() if n["class_type"] == "PatchVSR_Sampler")
    seen = []

    def on_message(msg):
        data = msg["data"]
        if msg["type"] == "progress" and data.get("node") == sampler:
            seen.append(data["value"])
            if len(seen) == 1:
                server.interrupt()

    result = server.run(prompt, timeout=600, on_message=on_message)
    assert result.status == "interrupted", result.status
    # Interrupted within a few patch batches, far from the 200 steps asked for.
    total = seen[0] and max(
        m["data"]["max"] for m in result.messages if m["type"] == "progress" and m["data"].get("node") == sampler
    )
    assert max(seen) < total / 20, (seen, total)
    assert server.run(small(object_info)).status == "success"


def test_wrong_model_family(server, object_info):
    from harness.tiny_models import DIT_I2V

    prompt = override(small(object_info), "UNETLoader", unet_name=f"{DIT_I2V.name}.safetensors")
    msg = error_text(server.run(prompt))
    assert "model: this Wan model takes 36 input channels (i2v)" in msg and "Connect a Wan T2V model" in msg, msg


def test_non_finite_frames(server, object_info):
    prompt = small(object_info)
    loader = next(k for k, n in prompt.items() if n["class_type"] == "GetVideoComponents")
    prompt["901"] = {"class_type": "PatchVSRTest_PoisonImages", "inputs": {"images": [loader, 0]}}
    part = next(n for n in prompt.values() if n["class_type"] == "PatchVSR_Partitioner")
    part["inputs"]["images"] = ["901", 0]
    msg = error_text(server.run(prompt))
    assert "images: 1 values are NaN or infinite" in msg, msg


def saved_latent(server, result):
    from safetensors.torch import load_file

    (path,) = result.files(server.output_dir, suffix=".latent")
    return load_file(str(path))["latent_tensor"]


def test_lora_is_applied_through_patches_and_never_leaks(server, object_info):
    from harness.tiny_models import LORA_NAME

    def run(lora, strength=1.0):
        prompt = small(object_info)
        sampler = next(k for k, n in prompt.items() if n["class_type"] == "PatchVSR_Sampler")
        prompt = override(prompt, "PatchVSR_Sampler", lora_name=lora, lora_strength=strength, seed=7)
        prompt["902"] = {
            "class_type": "SaveLatent",
            "inputs": {"samples": [sampler, 0], "filename_prefix": "latents/t"},
        }
        result = server.run(prompt)
        assert result.status == "success", json.dumps(result.error)[:2000]
        return saved_latent(server, result)

    plain = run("None")
    with_lora = run(f"{LORA_NAME}.safetensors")
    zero = run(f"{LORA_NAME}.safetensors", 0.0)
    # Another strength (ignored without a LoRA) so the server runs the sampler again instead of answering
    # from its cache: a LoRA that leaked into the loader's model would show here.
    again = run("None", 0.5)
    assert (with_lora - plain).abs().max() > 1e-3, "the LoRA changed nothing"
    assert (zero - plain).abs().max() == 0, "strength 0 must be the base model"
    assert (again - plain).abs().max() == 0, "the LoRA leaked into the input model"


@pytest.mark.parametrize("mode", ["decode-resize-encode", "latent bicubic"])
def test_t2v_latent_input_both_upscale_modes(server, object_info, mode):
    prompt = tiny_prompt(REPO / "workflows" / "patchvsr_t2v_to_2k.json", object_info, t2v_size=(128, 80, 5))
    prompt = override(prompt, "PatchVSR_Partitioner", target="scale", scale=2.0, patch_width=128, patch_height=80)
    prompt = override(prompt, "PatchVSR_UpscaleEncode", latent_mode=mode)
    sampler = next(k for k, n in prompt.items() if n["class_type"] == "PatchVSR_Sampler")
    prompt["903"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": "latents/t2v"}}
    result = server.run(prompt)
    assert result.status == "success", json.dumps(result.error)[:2000]
    assert list(saved_latent(server, result).shape) == [1, 16, 2, 20, 32]


def test_wan22_ti2v5b_layout_plans_and_samples(server):
    """48 latent channels at 16x: the plan uses Wan 2.2's stride and the sampler runs its DiT patch-wise."""
    from harness.tiny_models import DIT_22

    def latent(h, w, seed):
        return {
            "class_type": "PatchVSRTest_RandomLatent",
            "inputs": {"channels": 48, "frames": 2, "height": h, "width": w, "seed": seed},
        }

    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": f"{DIT_22.name}.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "PatchVSRTest_ZeroTextConditioning", "inputs": {"tokens": 8}},
        "3": latent(9, 16, 0),  # a 144x256 px LR clip in Wan 2.2's latent
        "4": {"class_type": "PatchVSR_Partitioner", "inputs": {
            "model": ["1", 0], "latent": ["3", 0], "target": "scale", "scale": 2.0, "keep_aspect": True,
            "patch_width": 256, "patch_height": 160, "window_frames": 0}},
        "5": latent(18, 32, 1),  # stands in for Upscale & Encode's output (no 48-channel VAE here)
        "6": {"class_type": "PatchVSR_Sampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "latent": ["5", 0], "plan": ["4", 0],
            "lora_name": "None", "lora_strength": 1.0, "seed": 0, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "t0": 0.5, "patch_batch": 2}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "latents/wan22"}},
    }  # fmt: skip
    result = server.run(prompt)
    assert result.status == "success", json.dumps(result.error)[:2000]
    out = saved_latent(server, result)
    assert list(out.shape) == [1, 48, 2, 18, 32] and out.isfinite().all()
