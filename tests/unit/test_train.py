"""The trainer on tiny real-architecture models: it learns, it resumes bit-exactly, and a run survives
restarts, cancels, other settings, existing files, bad names and unreadable clips."""

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from harness.inprocess import import_comfy, tiny_wan, training_mode
from harness.runs import make_clip

from models.adapter_file import load_adapter
from models.data import find_clips, read_clip
from models.latents import Sample, cache_latents, load_sample, split
from models.runs import check_name, checkpoints, prepare_run, run_folder, run_identity
from models.train import Trainer, train
from models.train_config import TrainConfig


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


@pytest.mark.parametrize("gca", ["inside", "after"])
def test_training_lowers_validation_loss_and_exports(host, data, tmp_path, gca):
    path, history = train(config(data, tmp_path, gca_placement=gca), tiny_wan(layers=2), host, text)
    vals = [h["val"] for h in history if "val" in h]
    print("validation loss", vals)
    assert vals[-1] < 0.7 * vals[0], vals
    adapter = load_adapter(path, tiny_wan(layers=2).blocks, tiny_wan(layers=2).patch_embedding, (128, 2, 1, 16))
    assert adapter.cfg.lora_rank == 4
    assert adapter.cfg.gca_in_cross_attention == (gca == "inside"), "the file records the G-CA placement"


def test_unknown_gca_placement_is_refused(data, tmp_path):
    with pytest.raises(ValueError, match="gca_placement: 'middle' is not one of inside, after"):
        Trainer(config(data, tmp_path, gca_placement="middle"), tiny_wan(layers=2), text)


def test_captions_come_from_sidecar_files(data):
    clips = find_clips(data)
    assert [c.caption for c in clips][:2] == ["moving colour bands", ""]


@pytest.mark.parametrize("stop", ["fewer steps", "cancel"])
def test_resume_is_bit_exact(host, data, tmp_path, stop):
    class Cancel(Exception):  # what ComfyUI's cancel raises from the progress check
        pass

    def run(work: Path, steps: int, cancel_at: int | None = None):
        cfg = config(data, work, steps=steps, ckpt_every=3, val_every=100)
        paths = cache_latents(cfg, find_clips(data), host)
        tr, va = split(paths, cfg.val_fraction, cfg.seed)
        trainer = Trainer(cfg, tiny_wan(layers=2), text)

        def check():
            if trainer.step == cancel_at:
                raise Cancel

        try:
            trainer.run([load_sample(p) for p in tr], [load_sample(p) for p in va], check=check)
        finally:
            trainer.close()
        return trainer

    straight = run(tmp_path / "a", 6)
    if stop == "fewer steps":
        run(tmp_path / "b", 3)  # leaves the step-3 checkpoint
    else:
        with pytest.raises(Cancel):
            run(tmp_path / "b", 6, cancel_at=4)  # between checkpoints: the cancel itself writes step 4
        assert [p.name for p in checkpoints(tmp_path / "b")] == ["step_0000003.ckpt", "step_0000004.ckpt"]
    resumed = run(tmp_path / "b", 6)
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
    assert len(wide) == 2 and len(narrow) == 1, "a single factor must cache one LR variant, not identical copies"


def test_hr_clip_is_encoded_once_for_all_its_variants(host, data, tmp_path):
    from safetensors.torch import load_file

    sizes = []

    def counting(px):
        sizes.append(tuple(px.shape))
        return host(px)

    clips = find_clips(data)[:1]
    paths = cache_latents(config(data, tmp_path), clips, counting)
    assert len(paths) == 2, paths  # two LR variants
    hr_px = tuple(read_clip(clips[0], config(data, tmp_path).max_frames).shape)
    assert sizes.count(hr_px) == 1 + len(paths), sizes  # HR once, then each variant's LR (same size)
    first, second = (load_file(str(p)) for p in paths)
    assert torch.equal(first["hr"], second["hr"]) and not torch.equal(first["lr"], second["lr"])


# -- runs that survive (issue 9, item 4) --------------------------------------------------------------------


def test_checkpoints_live_beside_the_adapter_which_is_never_overwritten_unless_asked(host, data, tmp_path):
    out = tmp_path / "models" / "patchvsr" / "mine.safetensors"
    cfg = config(data, run_folder(out), out=str(out), steps=3, ckpt_every=1, val_every=100)
    train(cfg, tiny_wan(layers=2), host, text)
    # The last two only (a long run must not fill the disk).
    assert [p.name for p in checkpoints(run_folder(out))] == ["step_0000002.ckpt", "step_0000003.ckpt"]
    assert run_folder(out) == out.parent / "mine.ckpt"
    # The loader lists models/patchvsr recursively: only the adapter may look like one.
    assert list(out.parent.rglob("*.safetensors")) == [out]
    before = out.read_bytes()
    with pytest.raises(ValueError, match="adapter 'mine.safetensors' already exists in .* allow overwrite"):
        train(replace(cfg, steps=4), tiny_wan(layers=2), host, text)
    assert out.read_bytes() == before
    # Asked: a longer run resumes the matching checkpoint (step 3) and replaces the file.
    path, history = train(replace(cfg, steps=4), tiny_wan(layers=2), host, text, overwrite=True)
    assert path == out and out.read_bytes() != before
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4]


def _checkpoint(cfg: TrainConfig, dm, clips) -> Path:
    """A step-0 checkpoint of `cfg` in cfg.work, without training."""
    trainer = Trainer(cfg, dm, text, clips=clips)
    try:
        return trainer.save_checkpoint()
    finally:
        trainer.close()


def _other_model():
    dm = tiny_wan(layers=2)
    with torch.no_grad():
        dm.blocks[1].self_attn.q.weight.mul_(1.01)  # a fine-tune: same dims, other weights
    return dm


@pytest.mark.parametrize(
    "change, expected",
    [
        (dict(lora_rank=8), "lora_rank 8 (checkpoint: 4)"),
        (dict(lr=2e-3), "lr 0.002 (checkpoint: 0.001)"),
        (dict(seed=1), "seed 1 (checkpoint: 0)"),
        (dict(scale=(2.0, 2.0)), "scale [2.0, 2.0] (checkpoint: [1.0, 4.5])"),
        (dict(accum=4), "batch 4 (checkpoint: 1)"),
        (dict(precision="fp32"), 'precision "fp32" (checkpoint: "auto")'),
        (dict(gca_placement="after"), 'gca_placement "after" (checkpoint: "inside")'),
        ("data", 'data "{other}" (checkpoint: "{data}")'),
        ("model", "model dim 128, 2 layers, 1 heads, 16 channels, weights "),
        ("clips", "clips 3 clips"),
    ],
    ids=["lora_rank", "hyper-parameter", "seed", "scale", "batch", "precision", "gca", "data folder", "model", "clips"],
)
def test_resume_with_other_settings_says_what_differs(host, data, tmp_path, change, expected):
    names = [c.path.name for c in find_clips(data)]
    cfg = config(data, tmp_path)
    saved = _checkpoint(cfg, tiny_wan(layers=2), names)
    dm, other = tiny_wan(layers=2), tmp_path / "other_clips"
    if change == "data":
        shutil.copytree(data, other)
        now = replace(cfg, data=str(other))
    elif change == "model":
        now, dm = cfg, _other_model()
    elif change == "clips":
        now, names = cfg, names[:3]
    else:
        now = replace(cfg, **change)
    with pytest.raises(ValueError) as err:
        prepare_run(now, run_identity(now, dm, names))
    msg = str(err.value)
    print(msg)
    assert "checkpoint 'step_0000000.ckpt' in" in msg and "is from a run with other settings: " in msg
    assert expected.format(other=other.resolve(), data=data.resolve()) in msg, msg
    assert msg.count("(checkpoint: ") == 1, "only the changed field is listed"
    assert msg.endswith("choose another adapter name, or allow overwrite (the node's overwrite input, "
                        "--overwrite or --restart on the command line) to start over (its checkpoints are deleted).")  # fmt: skip
    assert saved.exists()
    # The same check guards the Trainer itself: another rank is a clear error, not a raw size mismatch.
    trainer = Trainer(now, dm, text, clips=names)
    try:
        with pytest.raises(ValueError, match="is from a run with other settings"):
            trainer.load_checkpoint(saved)
    finally:
        trainer.close()


@pytest.mark.parametrize("flag", ["overwrite", "restart"])
def test_starting_over_deletes_the_checkpoints(data, tmp_path, flag):
    names = [c.path.name for c in find_clips(data)]
    cfg, dm = config(data, tmp_path), tiny_wan(layers=2)
    _checkpoint(cfg, dm, names)
    now = replace(cfg, lora_rank=8) if flag == "overwrite" else cfg  # restart also drops a matching one
    prepare_run(now, run_identity(now, dm, names), **{flag: True})
    assert checkpoints(tmp_path) == []


def test_matching_checkpoint_and_longer_run_resume(data, tmp_path):
    names = [c.path.name for c in find_clips(data)]
    cfg, dm = config(data, tmp_path), tiny_wan(layers=2)
    _checkpoint(cfg, dm, names)
    longer = replace(cfg, steps=99, val_every=7, ckpt_every=5)  # these do not change the weights of a step
    prepare_run(longer, run_identity(longer, dm, names))
    assert len(checkpoints(tmp_path)) == 1


@pytest.mark.parametrize(
    "name, expected",
    [
        ("", "adapter_name: the name is empty"),
        ("../evil", "adapter_name: '../evil' is a path, not a file name"),
        ("sub/dir", "is a path, not a file name"),
        ("C:name", "is a path, not a file name"),
        ("..", "is a path, not a file name"),
        ("x" * 101, "is 101 characters long; the limit is 100"),
        ("a*b?", "adapter_name: 'a*b?' contains '*' '?'"),
        (".hidden", "starts with '.'"),
        ("NUL", "reserved device name"),
    ],
)
def test_names_are_validated(name, expected):
    with pytest.raises(ValueError) as err:
        check_name(name)
    assert expected in str(err.value), str(err.value)


def test_good_names_pass():
    assert check_name("my adapter_v2.1-final") == "my adapter_v2.1-final"
    assert check_name("mine.safetensors") == "mine"
    assert check_name("détail") == "détail"


def test_unreadable_clips_are_skipped_with_one_line_each(host, data, tmp_path, caplog):
    folder = tmp_path / "mixed"
    shutil.copytree(data, folder)
    (folder / "garbage.mp4").write_bytes(bytes(range(256)) * 12)
    good = (folder / "clip1.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (folder / "broken.png").write_bytes(b"not a png")
    cfg = config(folder, tmp_path)
    with caplog.at_level(logging.WARNING, logger="models.latents"):
        paths = cache_latents(cfg, find_clips(folder), host)
    lines = [r.getMessage() for r in caplog.records]
    print("\n".join(lines))
    skipped = [ln for ln in lines if ln.startswith("skipped '")]
    assert {ln.split("'")[1] for ln in skipped} == {"garbage.mp4", "truncated.mp4", "broken.png"}
    assert all(len(ln) < 200 and "ffmpeg version" not in ln for ln in skipped), skipped
    assert lines[-1] == "skipped 3 of 7 clips that could not be read; training on 4"
    assert len(paths) == 4 * cfg.variants
    # Nothing readable: the run fails, saying so.
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(folder / "garbage.mp4", bad / "a.mp4")
    shutil.copy(folder / "broken.png", bad / "b.png")
    with pytest.raises(ValueError, match="data: none of the 2 clips in .* could be read"):
        cache_latents(config(bad, tmp_path), find_clips(bad), host)


@pytest.mark.parametrize("what", ["adapter", "checkpoint"])
def test_files_are_written_atomically(data, tmp_path, monkeypatch, what):
    import models.adapter_file
    import models.runs

    cfg = config(data, tmp_path)
    trainer = Trainer(cfg, tiny_wan(layers=2), text)
    try:
        target = Path(cfg.out) if what == "adapter" else trainer.save_checkpoint()
        target.write_bytes(b"the previous file")

        def crash(tensors, filename, metadata=None):
            Path(filename).write_bytes(b"half a fi")
            raise OSError("No space left on device")

        monkeypatch.setattr(models.adapter_file if what == "adapter" else models.runs, "save_file", crash)
        with pytest.raises(OSError):
            trainer.export() if what == "adapter" else trainer.save_checkpoint()
    finally:
        trainer.close()
    assert target.read_bytes() == b"the previous file"


# -- a trainer for real hardware (issue 9, item 3) -----------------------------------------------------------


def test_two_processes_train_as_one_with_the_same_global_batch(host, data, tmp_path):
    """Two CPU processes joined by gloo, as torchrun starts them: DDP with one example each follows one
    process with accum 2 (gradient accumulation); FSDP2 (shard) resumes DDP's checkpoint and goes on the
    same way. Rank 0 alone writes checkpoints and adapters, each once. Precision auto: bf16 on the CPU."""
    from harness import distributed

    one_cfg = config(data, tmp_path / "one", steps=3, ckpt_every=2, val_every=2, accum=2)
    paths = cache_latents(one_cfg, find_clips(data), host)
    tr, va = split(paths, one_cfg.val_fraction, one_cfg.seed)
    one = Trainer(one_cfg, tiny_wan(layers=2), text)
    try:
        one.run([load_sample(p) for p in tr], [load_sample(p) for p in va])
        one.export()
    finally:
        one.close()
    assert one.dtype == torch.bfloat16 and one.dm.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    ddp = config(data, tmp_path / "two", steps=2, ckpt_every=2, val_every=2, accum=1)
    sharded = replace(ddp, steps=3, shard=True, out=str(tmp_path / "two" / "sharded.safetensors"))
    ranks = distributed.run([ddp, sharded], tr, va, tmp_path / "results")

    def losses(history):
        return [(h["step"], h.get("loss"), h.get("val")) for h in history]

    expected = losses(one.history)
    print("one process, accum 2:", expected)
    for job, n_steps, rel in ((0, 2, 1e-5), (1, 3, 1e-3)):
        got = losses(ranks[0][job]["history"])
        print(["ddp", "fsdp"][job], got)
        assert got == losses(ranks[1][job]["history"]), "the ranks disagree on the losses"
        assert [g[0] for g in got] == [e[0] for e in expected[: n_steps + 1]]
        for g, e in zip(got, expected):
            assert all((a is None) == (b is None) for a, b in zip(g[1:], e[1:])), (g, e)
            assert all(a == pytest.approx(b, rel=rel) for a, b in zip(g[1:], e[1:]) if a is not None), (g, e)
    assert [r[0]["writes"] for r in ranks] == [["step_0000002.ckpt", "adapter.safetensors"], []]
    assert [r[1]["writes"] for r in ranks] == [["step_0000003.ckpt", "sharded.safetensors"], []]
    # The sharded run's file holds the whole adapter, gathered from the shards.
    dm = tiny_wan(layers=2)
    adapter = load_adapter(Path(sharded.out), dm.blocks, dm.patch_embedding, (128, 2, 1, 16))
    from safetensors import safe_open

    with safe_open(sharded.out, "pt") as f:
        meta = f.metadata()
    assert (meta["train_scale"], meta["train_batch"], meta["train_precision"]) == ("[1.0, 4.5]", "2", "bfloat16")
    ref = load_adapter(Path(one_cfg.out), dm.blocks, dm.patch_embedding, (128, 2, 1, 16)).state_dict()
    diff = max((v - ref[k]).abs().max().item() for k, v in adapter.state_dict().items())
    print("largest weight difference, sharded vs one process:", diff)
    assert diff < 3 * one_cfg.lr  # three Adam steps of at most ~lr each apart at worst


def test_global_batch_not_its_split_is_part_of_a_run(data):
    names = [c.path.name for c in find_clips(data)]
    cfg, dm = config(data, Path("unused")), tiny_wan(layers=2)
    # 2 processes x 1 example resume 1 process x 2 examples (and the other way round) ...
    assert run_identity(replace(cfg, accum=2), dm, names) == run_identity(cfg, dm, names, world_size=2)
    # ... and a bf16 copy of the base is the same base as its fp32 original.
    assert run_identity(cfg, dm, names) == run_identity(cfg, tiny_wan(layers=2).to(torch.bfloat16), names)


def test_each_precision_trains_like_fp32(host, data, tmp_path):
    """The frozen base in bf16 (auto on the CPU and on Ampere+ GPUs) or fp16 (older GPUs, with a loss
    scaler) takes the same path as fp32 to within rounding; the trained weights stay fp32."""
    cfg = config(data, tmp_path, steps=3, val_every=100, ckpt_every=100)
    tr, va = split(cache_latents(cfg, find_clips(data), host), cfg.val_fraction, cfg.seed)
    losses = {}
    for precision, dtype in (("fp32", torch.float32), ("auto", torch.bfloat16), ("fp16", torch.float16)):
        trainer = Trainer(replace(cfg, precision=precision, work=str(tmp_path / precision)), tiny_wan(layers=2), text)
        try:
            trainer.run([load_sample(p) for p in tr], [])
        finally:
            trainer.close()
        assert trainer.dm.blocks[0].self_attn.q.weight.dtype == dtype
        assert trainer.dm.patch_embedding.weight.dtype == torch.float32  # as the host keeps it
        assert {p.dtype for p in trainer.params} == {torch.float32}
        losses[precision] = [h["loss"] for h in trainer.history]
    print(losses)
    for precision in ("auto", "fp16"):
        assert losses[precision] == pytest.approx(losses["fp32"], rel=1e-2), precision


@pytest.mark.parametrize("rate", [0.0, 0.1, 1.0])
def test_the_null_prompt_replaces_captions_at_its_rate(data, tmp_path, rate):
    """The paper replaces 10% of the captions by the null prompt (TrainConfig.null_prompt); the loss then
    feeds text("") to the base and the global branch alike (the node's text function returns the text
    encoder's encoding of the empty prompt for it: nodes/train.text_function). Over 2000 draws the rate is
    within 2 points of the setting; 0 never and 1 always."""
    trainer = Trainer(config(data, tmp_path, null_prompt=rate), tiny_wan(layers=2), text)
    g = torch.Generator().manual_seed(0)
    sample = Sample(*(torch.randn(1, 16, 2, 8, 12, generator=g) for _ in range(2)), torch.randn(1, 16, 2, 6, 8), 2.0,
                    "a red car")  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    captions = [trainer._example(sample, gen)[-1] for _ in range(2000)]
    trainer.close()
    assert set(captions) <= {"", "a red car"}
    share = captions.count("") / len(captions)
    assert abs(share - rate) <= 0.02, share


# -- the command line tool (tools/train_adapter.py) ------------------------------------------------------------


def _tool():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "tools" / "train_adapter.py"
    spec = importlib.util.spec_from_file_location("train_adapter", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_command_line_defaults_are_the_configs_and_each_flag_sets_its_field(tmp_path):
    from dataclasses import asdict

    tool = _tool()
    required = ["--comfyui", "ComfyUI", "--model", "m.safetensors", "--vae", "v.safetensors", "--data",
                str(tmp_path), "--out", str(tmp_path / "a.safetensors")]  # fmt: skip
    plain = tool.config(tool.parser().parse_args(required), native_hw=(64, 96))
    assert asdict(plain) == asdict(TrainConfig(data=str(tmp_path), out=str(tmp_path / "a.safetensors"),
                                               work=str(tmp_path / "a.ckpt"), crop_px=(64, 96)))  # fmt: skip
    flags = ["--work", "w", "--steps", "7", "--lr", "0.5", "--lora-rank", "3", "--crop", "16", "32", "--max-frames",
             "9", "--scale", "2", "3", "--cond-noise", "0.1", "0.4", "--patch-blocks", "1", "--global-blocks", "2",
             "--accum", "4", "--precision", "fp32", "--shard", "--gca", "after", "--val-every", "5", "--ckpt-every",
             "6", "--seed", "9"]  # fmt: skip
    given = tool.config(tool.parser().parse_args(required + flags), native_hw=(64, 96))
    assert asdict(given) == asdict(plain) | dict(
        work="w", steps=7, lr=0.5, lora_rank=3, crop_px=(16, 32), max_frames=9, scale=(2.0, 3.0),
        cond_noise=(0.1, 0.4), patch_blocks=1, global_blocks=2, accum=4, precision="fp32", shard=True,
        gca_placement="after", val_every=5, ckpt_every=6, seed=9,
    )  # fmt: skip
