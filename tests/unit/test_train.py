"""The trainer on tiny real-architecture models: it learns, and it resumes bit-exactly."""

from pathlib import Path

import pytest
import torch
from harness.inprocess import import_comfy, tiny_wan, training_mode
from harness.runs import make_clip

from models.adapter_file import load_adapter
from models.train import TrainConfig, Trainer, cache_latents, find_clips, load_sample, split, train


@pytest.fixture(autouse=True)
def _training_mode():
    """As the trainer node does: autograd through the host's DiT (ComfyUI 0.33's kernels need the flag)."""
    with training_mode():
        yield


@pytest.fixture(scope="module")
def host(tiny_models):
    import_comfy()
    import comfy.latent_formats
    import comfy.sd
    import comfy.utils

    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(tiny_models / "vae" / "patchvsr-tiny-wan21-vae.safetensors")))
    fmt = comfy.latent_formats.Wan21()
    return lambda px: fmt.process_in(vae.encode(px))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    for i in range(4):
        make_clip(folder / f"clip{i}.mp4", width=96 + 16 * i, height=64, frames=5)
    (folder / "clip0.txt").write_text("moving colour bands")
    return folder


def config(data: Path, work: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(work / "adapter.safetensors"), work=str(work), steps=40, lr=1e-3,
                crop_px=(48, 64), max_frames=5, val_every=20, ckpt_every=20, lora_rank=4, patch_blocks=1,
                global_blocks=2, val_fraction=0.25)  # fmt: skip
    return TrainConfig(**(base | kw))


def text(caption: str) -> torch.Tensor:
    return torch.zeros(1, 1, 4096)


def test_training_lowers_validation_loss_and_exports(host, data, tmp_path):
    path, history = train(config(data, tmp_path), tiny_wan(layers=2), host, text)
    vals = [h["val"] for h in history if "val" in h]
    print("validation loss", vals)
    assert vals[-1] < 0.7 * vals[0], vals
    adapter = load_adapter(path, tiny_wan(layers=2).blocks, tiny_wan(layers=2).patch_embedding, (128, 2, 1, 16))
    assert adapter.cfg.lora_rank == 4


def test_captions_come_from_sidecar_files(data):
    clips = find_clips(data)
    assert [c.caption for c in clips][:2] == ["moving colour bands", ""]


def test_resume_is_bit_exact(host, data, tmp_path):
    def run(work: Path, steps: int):
        cfg = config(data, work, steps=steps, ckpt_every=3, val_every=100)
        paths = cache_latents(cfg, find_clips(data), host)
        tr, va = split(paths, cfg.val_fraction, cfg.seed)
        trainer = Trainer(cfg, tiny_wan(layers=2), text)
        try:
            trainer.run([load_sample(p) for p in tr], [load_sample(p) for p in va])
        finally:
            trainer.close()
        return trainer

    straight = run(tmp_path / "a", 6)
    run(tmp_path / "b", 3)
    resumed = run(tmp_path / "b", 6)  # picks up the step-3 checkpoint
    # The interrupted run also logged a validation loss at its last step (3); the losses and the final
    # validation must match an uninterrupted run exactly.
    losses = [[(h["step"], h["loss"]) for h in tr.history if "loss" in h] for tr in (straight, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    assert straight.history[-1] == resumed.history[-1]
    a, b = straight.adapter.state_dict(), resumed.adapter.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"


def test_cache_is_not_reused_for_another_scale_range(host, data, tmp_path):
    from safetensors import safe_open

    wide = cache_latents(config(data, tmp_path), find_clips(data)[:1], host)
    narrow = cache_latents(config(data, tmp_path, scale=(2.0, 2.0)), find_clips(data)[:1], host)
    assert not set(wide) & set(narrow), "a new scale range reused latents cached for the old one"
    assert {float(safe_open(str(p), "pt").metadata()["scale"]) for p in narrow} == {2.0}
