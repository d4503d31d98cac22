"""A PatchVSR adapter in the real server: loader node, sampler integration, isolation, the trainer node
and the command line trainer."""

import json
import re
import shutil
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


def test_anchoring_is_off_with_an_adapter_unless_asked(server, object_info):
    """With an adapter connected, the training-free anchoring runs only when the context's
    anchor_with_adapter is on: the default context and a strength-0 one give the same latent."""
    prompt = with_adapters(object_info, [ADAPTERS["a"]])
    ctx = next(k for k, n in prompt.items() if n["class_type"] == "PatchVSR_GlobalContext")
    assert prompt[ctx]["inputs"]["strength"] > 0 and not prompt[ctx]["inputs"].get("anchor_with_adapter")
    for i, inputs in ((1, {"strength": 0.0}), (2, {"anchor_with_adapter": True})):
        prompt[f"98{i}"] = json.loads(json.dumps(prompt[ctx]))
        prompt[f"98{i}"]["inputs"].update(inputs)
        prompt[f"96{i}"] = json.loads(json.dumps(prompt["960"]))
        prompt[f"96{i}"]["inputs"]["context"] = [f"98{i}", 0]
        prompt[f"97{i}"] = {"class_type": "SaveLatent",
                            "inputs": {"samples": [f"96{i}", 0], "filename_prefix": f"latents/adapter_{i}"}}  # fmt: skip
    out = latents(server, server.run(prompt))
    assert (out["0"] - out["1"]).abs().max() == 0, "the anchoring ran with an adapter although not asked"
    assert (out["0"] - out["2"]).abs().max() > 1e-4, "anchor_with_adapter changed nothing"


def _plain_with_save(object_info):
    prompt = override(small(object_info), "PatchVSR_Sampler", t0=0.6, seed=3)
    sampler = next(k for k, n in prompt.items() if n["class_type"] == "PatchVSR_Sampler")
    prompt["990"] = {
        "class_type": "SaveLatent",
        "inputs": {"samples": [sampler, 0], "filename_prefix": "latents/plain"},
    }
    return prompt


def _trainer_prompt(data, name: str, **inputs) -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": f"{DIT.name}.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": f"{VAE.name}.safetensors"}},
        "3": {"class_type": "PatchVSR_Trainer", "inputs": {
            "model": ["1", 0], "vae": ["2", 0], "data_folder": str(data), "adapter_name": name, "steps": 3,
            "learning_rate": 1e-3, "lora_rank": 4, "crop_width": 64, "crop_height": 48, "max_frames": 5,
            "checkpoint_every": 2, "seed": 0} | inputs},
    }  # fmt: skip


def _remove_run(server, tiny_models, name: str) -> None:
    """The models folder is shared by test sessions: a run of an earlier session must not be resumed."""
    for folder in (tiny_models / "patchvsr", server.base_dir / "models" / "patchvsr"):
        (folder / f"{name}.safetensors").unlink(missing_ok=True)
        shutil.rmtree(folder / f"{name}.ckpt", ignore_errors=True)


def test_trainer_node_trains_and_saves_a_loadable_adapter(server, tiny_models, tmp_path):
    data, name = tmp_path / "clips", "trained-by-node"
    for i in range(2):
        make_clip(data / f"c{i}.mp4", width=96, height=64, frames=5)
    (data / "broken.mp4").write_bytes(bytes(range(256)) * 12)  # skipped with one line, not the run's end
    _remove_run(server, tiny_models, name)
    result = server.run(_trainer_prompt(data, name, accumulate=2))
    assert result.status == "success", json.dumps(result.error)[:3000]
    saved = list(tiny_models.glob(f"patchvsr/{name}.safetensors")) + list(
        (server.base_dir / "models" / "patchvsr").glob(f"{name}.safetensors")
    )
    assert saved, "the trainer node wrote no adapter"
    out = saved[0]
    # Checkpoints beside the adapter, where a restart of ComfyUI (which empties temp/) does not reach.
    ckpts = out.parent / f"{name}.ckpt" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000002.ckpt", "step_0000003.ckpt"]
    assert not list(server.base_dir.glob("temp/patchvsr_train")), "checkpoints were written to temp"
    log = server.log_path.read_text()
    assert "skipped 'broken.mp4': Error opening input files: Invalid data found when processing input" in log
    assert "skipped 1 of 3 clips that could not be read; training on 2" in log
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:  # 2 examples a step, the frozen base in bf16 (precision auto)
        meta = f.metadata()
    assert (meta["train_batch"], meta["train_precision"], meta["train_scale"]) == ("2", "bfloat16", "[1.0, 4.5]")
    _remove_run(server, tiny_models, name)


def test_trainer_node_never_overwrites_unless_asked_and_resumes_only_the_same_run(server, tiny_models, tmp_path):
    data, name = tmp_path / "clips", "trained-twice"
    for i in range(2):
        make_clip(data / f"c{i}.mp4", width=96, height=64, frames=5)
    _remove_run(server, tiny_models, name)
    assert server.run(_trainer_prompt(data, name)).status == "success"
    out = next(
        p
        for p in (tiny_models / "patchvsr", server.base_dir / "models" / "patchvsr")
        if (p / f"{name}.safetensors").exists()
    )
    before = (out / f"{name}.safetensors").read_bytes()
    # 1. Train longer under the same name: the finished adapter is not replaced without overwrite ...
    msg = error_text(server.run(_trainer_prompt(data, name, steps=4)))
    assert f"adapter '{name}.safetensors' already exists in" in msg and "allow overwrite" in msg, msg
    assert (out / f"{name}.safetensors").read_bytes() == before
    # ... and with it, the step-3 checkpoint is resumed (steps may change) and the file replaced.
    assert server.run(_trainer_prompt(data, name, steps=4, overwrite=True)).status == "success"
    assert (out / f"{name}.safetensors").read_bytes() != before
    assert "resumed from step_0000003.ckpt at step 3" in server.log_path.read_text()
    # 2. Another rank under the same name: what differs, not a raw size mismatch.
    (out / f"{name}.safetensors").unlink()
    msg = error_text(server.run(_trainer_prompt(data, name, steps=4, lora_rank=8)))
    assert "is from a run with other settings: lora_rank 8 (checkpoint: 4)." in msg, msg
    assert "choose another adapter name, or allow overwrite" in msg, msg
    # 3. Names that are paths or odd characters.
    msg = error_text(server.run(_trainer_prompt(data, "../escape")))
    assert "adapter_name: '../escape' is a path, not a file name" in msg, msg
    _remove_run(server, tiny_models, name)


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
    (data / "broken.mp4").write_bytes(bytes(range(256)) * 12)
    out = tmp_path / "cli.safetensors"
    cmd = [
        host_python(), str(REPO / "tools" / "train_adapter.py"), "--comfyui", str(comfy_root()),
        "--model", str(tiny_models / "diffusion_models" / f"{DIT.name}.safetensors"),
        "--vae", str(tiny_models / "vae" / f"{VAE.name}.safetensors"), "--data", str(data), "--out", str(out),
        "--steps", "2", "--lr", "1e-3", "--lora-rank", "4", "--crop", "48", "64", "--max-frames", "5",
    ]  # fmt: skip

    def cli(*extra):
        return subprocess.run(cmd + list(extra), capture_output=True, text=True, timeout=600)

    run = cli()
    assert run.returncode == 0, run.stderr[-3000:]
    assert out.exists() and f"wrote {out}" in run.stdout, run.stdout
    assert "skipped 'broken.mp4': Error opening input files" in run.stderr, run.stderr[-3000:]
    assert "skipped 1 of 3 clips that could not be read; training on 2" in run.stderr
    assert (tmp_path / "cli.ckpt" / "checkpoints" / "step_0000002.ckpt").exists()  # beside the adapter
    assert re.search(r"step 1 of 2 done \([\d.]+ s\)\nstep 2 of 2 done", run.stderr), run.stderr[-3000:]
    before = out.read_bytes()
    # The same command again: the finished adapter is kept.
    run = cli()
    assert run.returncode == 2 and "adapter 'cli.safetensors' already exists" in run.stderr, run.stderr[-3000:]
    assert out.read_bytes() == before
    # Another rank: what differs; --restart starts over.
    out.unlink()
    run = cli("--lora-rank", "8")
    assert run.returncode == 2 and "lora_rank 8 (checkpoint: 4)" in run.stderr, run.stderr[-3000:]
    run = cli("--lora-rank", "8", "--restart")
    assert run.returncode == 0 and "starting over: deleting 1 checkpoints" in run.stderr, run.stderr[-3000:]


def test_command_line_trainer_under_torchrun(tiny_models, tmp_path):
    """The GPU-node command, on 2 CPU processes (gloo): torchrun starts tools/train_adapter.py twice, --shard
    shards the adapter and AdamW (FSDP2). One log, one adapter gathered from the shards, global batch 2.
    (That 2 processes follow 1 process's losses: tests/unit/test_train.py.)"""
    from safetensors import safe_open

    data = tmp_path / "clips"
    for i in range(3):
        make_clip(data / f"c{i}.mp4", width=96, height=64, frames=5)
    (data / "broken.mp4").write_bytes(bytes(range(256)) * 12)
    out = tmp_path / "multi.safetensors"
    cmd = [
        host_python(), "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(REPO / "tools" / "train_adapter.py"), "--comfyui", str(comfy_root()),
        "--model", str(tiny_models / "diffusion_models" / f"{DIT.name}.safetensors"),
        "--vae", str(tiny_models / "vae" / f"{VAE.name}.safetensors"), "--data", str(data), "--out", str(out),
        "--steps", "2", "--lr", "1e-3", "--lora-rank", "4", "--crop", "48", "64", "--max-frames", "5",
        "--accum", "1", "--shard", "--val-every", "2",
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    print(run.stdout, run.stderr[-3000:])
    assert run.stdout.count(f"wrote {out}") == 1, run.stdout
    assert "[rank 0] 2 processes, global batch 2 (--accum 1 per process)" in run.stderr
    assert run.stderr.count("skipped 1 of 4 clips that could not be read; training on 3") == 1
    assert [p.name for p in (tmp_path / "multi.ckpt" / "checkpoints").iterdir()] == ["step_0000002.ckpt"]
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert (meta["train_batch"], meta["train_scale"], meta["train_steps"]) == ("2", "[1.0, 4.5]", "2")
