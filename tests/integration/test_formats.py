"""The model formats artists load, through the real server: fp16, bf16, fp8 (e4m3fn) and ComfyUI's scaled-fp8
checkpoints of the tiny Wan, and an fp16 file loaded with UNETLoader's weight_dtype fp8_e4m3fn. Each runs
the training-free sampler and the adapter path, and lands close to the float32 model's result. LoRAs
applied by the core loader in front of the sampler take effect and leave the model they patch as it was."""

import json
import logging

import pytest
from harness.tiny_models import ADAPTERS, DISTILL_LORA_NAME, DIT, LORA_NAME, format_name
from harness.workflow import override, prune
from test_adapter_server import with_adapters
from test_validation import saved_latent, small

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

# case -> (UNETLoader file, weight_dtype, tolerance). The tolerance bounds the distance to the float32
# result relative to the change the sampler makes to its input latent (see relative_error), a few times
# what one run measured on the CPU host: fp16 0.0003, bf16 0.0020, each fp8 case 0.025-0.029. A CPU host
# upcasts fp16, bf16 and plain fp8 files to float32 at load, so only the rounding of the stored weights
# shows; scaled fp8 and weight_dtype fp8_e4m3fn keep fp8 weights in memory and cast them per layer.
CASES = {
    "fp16": (format_name("fp16"), "default", 0.003),
    "bf16": (format_name("bf16"), "default", 0.01),
    "fp8_e4m3fn": (format_name("fp8_e4m3fn"), "default", 0.1),
    "fp8_scaled": (format_name("fp8_scaled"), "default", 0.1),
    "fp16_as_fp8_e4m3fn": (format_name("fp16"), "fp8_e4m3fn", 0.1),
}


def latents_only(prompt: dict, object_info: dict) -> dict:
    """Drops the video decode and save: these tests read the saved latents, and the decode is most of a run."""
    for key in [k for k, n in prompt.items() if n["class_type"] == "SaveVideo"]:
        del prompt[key]
    return prune(prompt, object_info)


def graph(object_info, unet: str, weight_dtype: str, tag: str) -> dict:
    """The small 2x graph with a training-free sampler and one with the tiny adapter, saving the encoded
    input latent and both results under names that carry `tag`."""
    prompt = with_adapters(object_info, [ADAPTERS["a"]])
    prompt = override(prompt, "UNETLoader", unet_name=f"{unet}.safetensors", weight_dtype=weight_dtype)
    sampler = next(
        k for k, n in prompt.items() if n["class_type"] == "PatchVSR_Sampler" and "adapter" not in n["inputs"]
    )
    encoded = prompt[sampler]["inputs"]["latent"]
    for key, node, what in (("980", encoded, "input"), ("981", [sampler, 0], "plain")):
        prompt[key] = {
            "class_type": "SaveLatent",
            "inputs": {"samples": node, "filename_prefix": f"latents/fmt-{tag}-{what}"},
        }
    for node in prompt.values():  # the adapter sampler's SaveLatent from with_adapters
        if node["class_type"] == "SaveLatent" and node["inputs"]["filename_prefix"].startswith("latents/adapter"):
            node["inputs"]["filename_prefix"] = f"latents/fmt-{tag}-adapter"
    return latents_only(prompt, object_info)


def run_graph(server, object_info, unet: str, weight_dtype: str, tag: str) -> dict:
    from safetensors.torch import load_file

    result = server.run(graph(object_info, unet, weight_dtype, tag))
    assert result.status == "success", json.dumps(result.error)[:3000]
    out = {}
    for path in result.files(server.output_dir, suffix=".latent"):
        out[path.name.split("-")[2].split("_")[0]] = load_file(str(path))["latent_tensor"]
    assert set(out) == {"input", "plain", "adapter"}, sorted(out)
    return out


def relative_error(got, want, start) -> float:
    """Distance to the float32 result over the distance the float32 sampler moved its input: the part of
    the output that the model made, not the part SDEdit carries over from the input."""
    return float((got - want).norm() / (want - start).norm())


@pytest.fixture(scope="module")
def reference(server, object_info) -> dict:
    return run_graph(server, object_info, DIT.name, "default", "fp32")


@pytest.mark.parametrize("case", CASES)
def test_format_runs_both_paths_close_to_float32(server, object_info, reference, case):
    unet, weight_dtype, tol = CASES[case]
    got = run_graph(server, object_info, unet, weight_dtype, case)
    start = reference["input"]
    for path in ("plain", "adapter"):
        assert got[path].isfinite().all(), f"{case}: the {path} result holds NaN or infinite values"
        err = relative_error(got[path], reference[path], start)
        log.info("%s %s: relative error %.4f", case, path, err)
        assert err < tol, f"{case}: {path} result is {err:.4f} from float32's (tolerance {tol})"
    # The adapter still takes effect in this format (its effect is far above the format's rounding).
    effect = relative_error(got["adapter"], got["plain"], start)
    log.info("%s: adapter effect %.4f", case, effect)
    assert effect > 2 * tol, f"{case}: the adapter changed the result by only {effect:.4f}"


# LoRA file, sampler settings it is used with. Step-distillation LoRAs are run as artists run them:
# cfg 1, few steps, the lcm sampler.
CORE_LORAS = {
    "lora": (LORA_NAME, {}),
    "step_distill_lora": (DISTILL_LORA_NAME, {"cfg": 1.0, "sampler_name": "lcm"}),
}


@pytest.mark.parametrize("case", CORE_LORAS)
def test_core_lora_loader_in_front_of_the_sampler(server, object_info, case):
    """A LoRA applied by the core LoraLoaderModelOnly takes effect in the PatchVSR sampler, and the
    unpatched model it was applied to gives the result it gave before."""
    lora, settings = CORE_LORAS[case]

    def run(with_lora: bool, strength: float = 1.0):
        prompt = override(small(object_info), "PatchVSR_Sampler", seed=7, lora_strength=strength, **settings)
        sampler = next(k for k, n in prompt.items() if n["class_type"] == "PatchVSR_Sampler")
        if with_lora:
            prompt["910"] = {
                "class_type": "LoraLoaderModelOnly",
                "inputs": {"model": prompt[sampler]["inputs"]["model"], "lora_name": f"{lora}.safetensors",
                           "strength_model": 1.0},
            }  # fmt: skip
            prompt[sampler]["inputs"]["model"] = ["910", 0]
        prompt["911"] = {
            "class_type": "SaveLatent",
            "inputs": {"samples": [sampler, 0], "filename_prefix": f"latents/core-{case}"},
        }
        result = server.run(latents_only(prompt, object_info))
        assert result.status == "success", json.dumps(result.error)[:3000]
        return saved_latent(server, result)

    plain = run(False)
    with_lora = run(True)
    # The sampler's own lora_strength is unused without its lora_name; changing it makes the host run the
    # sampler again instead of answering from its cache, now on a model the LoRA was loaded onto.
    again = run(False, strength=0.5)
    assert (with_lora - plain).abs().max() > 1e-3, f"{case}: the LoRA changed nothing"
    assert (again - plain).abs().max() == 0, f"{case}: the LoRA leaked into the input model"
