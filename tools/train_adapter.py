"""Train a PatchVSR adapter from the command line, with the same code as the PatchVSR Adapter Trainer node
(nodes/train.py `run`).

    python tools/train_adapter.py --comfyui /path/to/ComfyUI \\
        --model /path/to/wan2.1_t2v_1.3B_fp16.safetensors --vae /path/to/wan_2.1_vae.safetensors \\
        [--text-encoder /path/to/umt5_xxl_fp8_e4m3fn_scaled.safetensors] \\
        --data /path/to/hr_videos --out my_adapter.safetensors --steps 20000

Several GPUs (data parallel, one process per GPU; the global batch is --accum x GPUs):

    torchrun --nproc-per-node 8 tools/train_adapter.py ... --accum 8 [--shard]

--shard shards the adapter, its gradients and AdamW moments over the GPUs (FSDP2), for the 14B base whose
adapter and optimiser do not fit one GPU; without it every GPU holds all of them (DDP).

Runs on the GPU when ComfyUI finds one, else on the CPU, with the frozen base in bf16 (fp16 on GPUs
without bf16; --precision). Latents are cached and checkpoints written under --work (default: <out>.ckpt
beside the adapter); running the same command again resumes from the last checkpoint (Ctrl-C writes one
first), also with another number of GPUs and --accum when the global batch is the same. A checkpoint made
with other settings, or an existing --out, stops the run with what differs; --overwrite replaces the
adapter and starts over if the settings differ, --restart always starts over.

Exit status: 0 done, 2 a refused run or bad arguments (the message says what to change), 130 stopped by
Ctrl-C (with a checkpoint to resume from).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path
from typing import NoReturn

PACK = Path(__file__).resolve().parents[1]
# The pack's folder (ComfyUI-PatchVSR) is no Python name; its modules are imported as this package.
PACKAGE = "patchvsr_pack"
log = logging.getLogger("patchvsr.train_adapter")


def pack_package():
    """The pack as the package `patchvsr_pack`, registered without running its __init__.py (which needs
    ComfyUI, set up only once the arguments are parsed): its pure PyTorch models/ imports at once."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACKAGE, PACK / "__init__.py", submodule_search_locations=[str(PACK)]
        )
        sys.modules[PACKAGE] = importlib.util.module_from_spec(spec)
    return sys.modules[PACKAGE]


def import_pack(comfyui: Path):
    """ComfyUI on sys.path with its command line parsed as main.py would, then the pack's __init__.py run."""
    sys.path.insert(0, str(comfyui))
    import comfy.options

    comfy.options.enable_args_parsing()
    saved = sys.argv
    import torch

    sys.argv = [saved[0]] + ([] if torch.cuda.is_available() else ["--cpu"])
    try:
        import comfy.cli_args  # noqa: F401
    finally:
        sys.argv = saved
    pack = pack_package()
    pack.__spec__.loader.exec_module(pack)
    return pack


class StopBetweenSteps:
    """Ctrl-C stops the run at the next step boundary, where the trainer writes a checkpoint first (a
    KeyboardInterrupt mid-step would lose the steps since the last one). A second Ctrl-C stops at once.
    Used as the trainer's progress: its check() is called before every step (and between clips while
    latents are cached), set() after it, so the time from the last check() to set() is the step's."""

    def __enter__(self):
        self.asked = False
        self.checked = time.monotonic()
        self.previous = signal.signal(signal.SIGINT, self._ask)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)

    def _ask(self, signum, frame):
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        log.info("stopping after this clip or step, with a checkpoint (Ctrl-C again to stop now)")

    def check(self) -> None:
        self.checked = time.monotonic()
        if self.asked:
            raise KeyboardInterrupt

    def set(self, step: int, total: int) -> None:
        # A step of a real-size base takes seconds on a GPU and minutes on a CPU: without a line per step the
        # command says nothing between loading and the end of the run.
        log.info("step %d of %d done (%.1f s)", step, total, time.monotonic() - self.checked)


def parser() -> argparse.ArgumentParser:
    """The flags. A training setting's type and default come from TrainConfig (models/train_config.py):
    written once, there, so this tool cannot drift from the dataclass."""
    pack_package()
    from patchvsr_pack.models.train_config import GCA_PLACEMENTS, PRECISIONS, TrainConfig

    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def setting(flag: str, name: str, text: str = "", **kw) -> None:
        """`flag` sets TrainConfig.<name>; a pair (tuple) takes two values, a switch (False) none."""
        default = defaults[name]
        if isinstance(default, bool):
            assert default is False, f"{flag}: a switch can only turn TrainConfig.{name} on"
            p.add_argument(flag, dest=name, action="store_true", help=text, **kw)
            return
        pair = isinstance(default, tuple)
        p.add_argument(flag, dest=name, type=type(default[0] if pair else default), nargs=2 if pair else None,
                       default=default, help=f"{text}; default %(default)s" if text else "default %(default)s",
                       **kw)  # fmt: skip

    p.add_argument("--comfyui", type=Path, required=True, help="the ComfyUI folder (holding main.py)")
    p.add_argument("--model", type=Path, required=True, help="Wan T2V diffusion model .safetensors")
    p.add_argument("--vae", type=Path, required=True, help="its VAE .safetensors")
    p.add_argument(
        "--text-encoder",
        type=Path,
        help="Wan's umT5 text encoder, for the sidecar captions and the null prompt (its encoding of the empty "
        "prompt); without it captions are ignored and the null prompt is a zero token",
    )
    p.add_argument("--data", type=Path, required=True, help="folder of HR videos / images")
    p.add_argument("--out", type=Path, required=True, help="adapter .safetensors to write")
    p.add_argument("--work", type=Path, help="cache and checkpoints (default: <out>.ckpt beside the adapter)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out; start over if settings differ")
    p.add_argument("--restart", action="store_true", help="delete the run's checkpoints and start from step 0")
    setting("--steps", "steps")
    setting("--lr", "lr")
    setting("--lora-rank", "lora_rank")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="crop size in pixels (default: native)")
    setting("--max-frames", "max_frames")
    setting(
        "--scale",
        "scale",
        "LR down-scale factor range, s ~ U[LO, HI] (paper: 1 4; the default covers 480p to 4K); stored in the "
        "adapter's metadata; narrow it to train for one factor",
        metavar=("LO", "HI"),
    )
    setting(
        "--cond-noise",
        "cond_noise",
        "patch-condition noise augmentation range (paper: 0.2 0.3); its middle is used at inference",
        metavar=("LO", "HI"),
    )
    setting("--patch-blocks", "patch_blocks", "patch-branch blocks (0 = 1/6 of the base)")
    setting("--global-blocks", "global_blocks", "global-branch blocks (0 = 1/10 of the base)")
    setting("--accum", "accum", "examples per GPU per step (gradient accumulation); batch = accum x GPUs")
    setting(
        "--precision",
        "precision",
        "dtype of the frozen base and the computation (auto: bf16, fp16 on GPUs without bf16); the trained "
        "weights and AdamW stay fp32",
        choices=PRECISIONS,
    )
    setting(
        "--shard",
        "shard",
        "under torchrun: shard the adapter, gradients and AdamW over the GPUs (FSDP2) instead of a copy each",
    )
    setting(
        "--gca",
        "gca_placement",
        "where G-CA (the global context's cross-attention) joins each base block: inside its text "
        "cross-attention, sharing its query and output projection (the paper's supplement), or after the block "
        "with a query and output projection of its own (about 4%% more per adapter step); recorded in the "
        "adapter file, and a checkpoint of the other placement is not resumed",
        choices=GCA_PLACEMENTS,
    )
    setting("--val-every", "val_every")
    setting("--ckpt-every", "ckpt_every")
    setting("--seed", "seed")
    return p


def config(args: argparse.Namespace, native_hw: tuple[int, int]):
    """The TrainConfig the flags describe; the crop is the base's native size without --crop."""
    pack_package()
    from patchvsr_pack.models.runs import run_folder
    from patchvsr_pack.models.train_config import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in names}
    return TrainConfig(**given | dict(
        data=str(args.data), out=str(args.out), work=str(args.work or run_folder(args.out)),
        crop_px=tuple(args.crop or native_hw),
    ))  # fmt: skip


def main(argv: list[str]) -> NoReturn:
    p = parser()
    args = p.parse_args(argv)
    # torchrun's environment (models/distributed.py reads it too, once the pack is importable)
    size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    # One log, from rank 0; the other ranks say only what goes wrong (e.g. a clip they could not read).
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(message)s" if size == 1 else f"[rank {rank}] %(message)s",
    )
    if args.out.suffix != ".safetensors":
        p.error(f"--out: '{args.out}' must end in .safetensors (the loader lists only those).")
    if args.accum < 1:
        p.error(f"--accum: {args.accum}; give at least 1 example per GPU and step.")
    if args.shard and size == 1:
        p.error("--shard: one process has nothing to shard over; start the run with torchrun --nproc-per-node N.")
    import torch

    if size > 1 and torch.cuda.is_available():  # ComfyUI takes the current CUDA device: one GPU per rank
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    import_pack(args.comfyui)
    from patchvsr_pack.models import distributed

    world = distributed.from_env()
    distributed.init(world)
    try:
        code = _train(p, args, world)
    finally:
        distributed.close(world)
    distributed.end_process(world, code)


def _train(p: argparse.ArgumentParser, args: argparse.Namespace, world) -> int:
    import comfy.sd
    import comfy.utils
    from patchvsr_pack.models.runs import check_name
    from patchvsr_pack.nodes.host import model_family
    from patchvsr_pack.nodes.train import host_functions, run, train_dtype

    try:
        check_name(args.out.name, "--out")
    except ValueError as e:
        p.error(str(e))
    model = comfy.sd.load_diffusion_model(str(args.model))
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(args.vae)))
    clip = None
    if args.text_encoder:
        clip = comfy.sd.load_clip(ckpt_paths=[str(args.text_encoder)], clip_type=comfy.sd.CLIPType.WAN)
    cfg = config(args, model_family(model).native_hw)
    if world.main and world.size > 1:
        log.info("%d processes, global batch %d (--accum %d per process)", world.size, world.size * args.accum,
                 args.accum)  # fmt: skip
    try:
        host = host_functions(model, vae, clip, train_dtype(cfg))
        # The trainer trains its own copy of the DiT (host_functions). Kept, the host's model would hold a second
        # copy of the base for the whole run: its fp32 weights on a CPU (5.3 GiB at 1.3B, measured in
        # docs/real_dims.md), the CPU copy every process of a GPU run loaded (28.6 GB at 14B).
        del model
        with StopBetweenSteps() as progress:
            path, history = run(host, cfg, progress, overwrite=args.overwrite, restart=args.restart, world=world)
    except ValueError as e:  # a refused run: the message says what differs and what to do
        if world.main:  # every rank stops with the same message (models/train.py shares rank 0's verdict)
            log.error("error: %s", e)
        return 2
    except KeyboardInterrupt:
        if world.main:
            log.error("interrupted; run the same command again to resume")
        return 130
    if not world.main:
        return 0
    vals = [h for h in history if "val" in h]
    for h in vals:
        print(f"step {h['step']:>7}  validation loss {h['val']:.5f}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    main(sys.argv[1:])
