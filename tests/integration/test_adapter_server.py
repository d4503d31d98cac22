"""A PatchVSR adapter in the real server: loader node, sampler integration, isolation, the trainer node
and the command line trainer."""

import json
import subprocess

import pytest
from harness.paths import REPO, comfy_root, host_python
from harness.runs import make_clip
from harness.tiny_models import ADAPTERS, DIT, VAE
from harness.workflow import override
from test_validation import error_text, saved_latent, small

pytestmark = pytest.mark.integration


def with_adapters(object_info, names: list[str], t0=0.6):
    """The small 2x workflow with one sampler per adapter, each saving its latent."""
    prompt = override(small(object_info), "PatchVSR_Sampler", t0=t0, seed=3)
    sampler = next(k for k, n in prompt.items() if n["class_type"] == "PatchVSR_Sampler")
    model = prompt[sampler]["inputs"]["model"]
    for i, name in enumerate(names):
        loader, s, save = f"{950 + i}", f"{960 + i}", f"{970 + i}"
        prompt[loader] = {
            "class_type": "PatchVSR_AdapterLoader",
            "inputs": {"model": model, "adapter_name": f"{name}.safetensors"},
        }
        prompt[s] = json.loads(json.dumps(prompt[sampler]))
        prompt[s]["inputs"]["adapter"] = [loader, 0]
        prompt[save] = {
            "class_type": "SaveLatent",
            "inputs": {"samples": [s, 0], "filename_prefix": f"latents/adapter_{i}"},
        }
    return prompt


def latents(server, result):
    from safetensors.torch import load_file

    assert result.status == "success", json.dumps(result.error)[:3000]
    paths = sorted(result.files(server.output_dir, suffix=".latent"))
    return {p.name.split("_")[1]: load_file(str(p))["latent_tensor"] for p in paths}


def test_loader_lists_and_checks_adapters(server, object_info):
    options = object_info["PatchVSR_AdapterLoader"]["input"]["required"]["adapter_name"][1]["options"]
    assert {f"{n}.safetensors" for n in ADAPTERS.values()} <= set(options), options
    prompt = with_adapters(object_info, [ADAPTERS["other"]])
    msg = error_text(server.run(prompt))
    assert "was trained for another base model: base_layers 3 (model: 2)" in msg, msg


def test_adapter_changes_the_result_and_two_adapters_do_not_interfere(server, object_info):
    alone_a = latents(server, server.run(with_adapters(object_info, [ADAPTERS["a"]])))["0"]
    both = latents(server, server.run(with_adapters(object_info, [ADAPTERS["a"], ADAPTERS["b"]])))
    plain = saved_latent(server, server.run(_plain_with_save(object_info)))
    assert (alone_a - both["0"]).abs().max() == 0, "a second sampler with another adapter changed the first"
    assert (both["0"] - both["1"]).abs().max() > 1e-4, "two different adapters gave the same result"
    assert (alone_a - plain).abs().max() > 1e-4, "the adapter changed nothing"


def _plain_with_save(object_info):
    prompt = override(small(object_info), "PatchVSR_Sampler", t0=0.6, seed=3)
    sampler = next(k for k, n in prompt.items() if n["class_type"] == "PatchVSR_Sampler")
    prompt["990"] = {
        "class_type": "SaveLatent",
        "inputs": {"samples": [sampler, 0], "filename_prefix": "latents/plain"},
    }
    return prompt


def test_trainer_node_trains_and_saves_a_loadable_adapter(server, tiny_models, tmp_path):
    data = tmp_path / "clips"
    for i in range(2):
        make_clip(data / f"c{i}.mp4", width=96, height=64, frames=5)
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": f"{DIT.name}.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": f"{VAE.name}.safetensors"}},
        "3": {"class_type": "PatchVSR_Trainer", "inputs": {
            "model": ["1", 0], "vae": ["2", 0], "data_folder": str(data), "adapter_name": "trained-by-node", "steps": 3,
            "learning_rate": 1e-3, "lora_rank": 4, "crop_width": 64, "crop_height": 48, "max_frames": 5,
            "checkpoint_every": 2, "seed": 0}},
    }  # fmt: skip
    result = server.run(prompt)
    assert result.status == "success", json.dumps(result.error)[:3000]
    saved = list(tiny_models.glob("patchvsr/trained-by-node.safetensors")) + list(
        (server.base_dir / "models" / "patchvsr").glob("trained-by-node.safetensors")
    )
    assert saved, "the trainer node wrote no adapter"
    saved[0].unlink()


def test_trainer_node_rejects_an_inverted_range(server, tmp_path):
    make_clip(tmp_path / "c0.mp4", width=96, height=64, frames=5)
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": f"{DIT.name}.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": f"{VAE.name}.safetensors"}},
        "3": {"class_type": "PatchVSR_Trainer", "inputs": {
            "model": ["1", 0], "vae": ["2", 0], "data_folder": str(tmp_path), "adapter_name": "never-written",
            "steps": 1, "learning_rate": 1e-3, "lora_rank": 4, "crop_width": 64, "crop_height": 48, "max_frames": 5,
            "checkpoint_every": 1, "seed": 0, "scale_min": 3.0, "scale_max": 2.0}},
    }  # fmt: skip
    msg = error_text(server.run(prompt))
    assert "scale_min: 3.0 is above scale_max 2.0" in msg, msg


def test_command_line_trainer(tiny_models, tmp_path):
    data = tmp_path / "clips"
    make_clip(data / "c0.mp4", width=96, height=64, frames=5)
    make_clip(data / "c1.mp4", width=80, height=64, frames=5)
    out = tmp_path / "cli.safetensors"
    cmd = [
        host_python(), str(REPO / "nodes" / "train_cli.py"), "--comfyui", str(comfy_root()),
        "--model", str(tiny_models / "diffusion_models" / f"{DIT.name}.safetensors"),
        "--vae", str(tiny_models / "vae" / f"{VAE.name}.safetensors"), "--data", str(data), "--out", str(out),
        "--steps", "2", "--lr", "1e-3", "--lora-rank", "4", "--crop", "48", "64", "--max-frames", "5",
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert out.exists() and f"wrote {out}" in run.stdout, run.stdout
