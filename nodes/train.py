"""Adapter trainer node, and the host glue the command line tool (tools/train_adapter.py) shares with it."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import comfy.model_management
import folder_paths
import torch
from comfy_api.latest import io

from ..models.adapter import plain_copy
from ..models.data import find_clips
from ..models.distributed import ONE, World
from ..models.runs import check_name, run_folder
from ..models.train import compute_dtype, train
from ..models.train_config import GCA_PLACEMENTS, PRECISIONS, TrainConfig
from .adapter import FOLDER, register_folder
from .host import Progress, check_vae, model_family, real_weight, training_mode
from .sockets import CATEGORY
from .validate import widget_errors

log = logging.getLogger(__name__)
# The trainer's own defaults, which the node's widgets show (and the command line's options take too).
D = TrainConfig(data="", out="", work="")


def text_function(clip, width: int):
    """text(caption) -> [1, L, width] conditioning for the trainer; "" is the null prompt.

    The null prompt is the text encoder's encoding of the empty prompt (what the base sees for an empty
    prompt at inference; the paper replaces 10% of the captions by it), encoded once. Without a text
    encoder every caption is the null prompt and the only one available is a zero token."""
    if clip is None:
        log.warning(
            "no text encoder given: captions are ignored and the null prompt is a zero token, not the encoded "
            "empty prompt; connect the Wan text encoder (node: clip input, CLI: --text-encoder) to train as the paper does"
        )
        zero = torch.zeros(1, 1, width)
        return lambda caption: zero
    cache = {}

    def text(caption: str) -> torch.Tensor:
        if caption in cache:
            return cache[caption]
        with torch.inference_mode(False), torch.no_grad():
            out = clip.encode_from_tokens(clip.tokenize(caption)).float().clone()
        if not caption:
            cache[caption] = out
        return out

    return text


def host_functions(model, vae, clip=None, dtype: torch.dtype = torch.float32):
    """(frozen DiT copy, encode, text) for the trainer from ComfyUI objects. The DiT is copied so
    the LoRA hooks and training never touch the artist's model."""
    family = model_family(model)
    check_vae(vae, family)
    with torch.inference_mode(False):
        # ComfyUI loads weights under inference_mode; autograd refuses such tensors, so the copy gets
        # ordinary tensors of the trainer's compute dtype, read as real numbers whatever the model's format
        # (fp8, scaled fp8, quantized), in stock layers (a deep copy would keep fp8 storage and the host's
        # scaling ops). Straight to that dtype: no fp32 copy of a 14B base on the way.
        dm = plain_copy(model.model.diffusion_model, dtype, real_weight)
    latent_format = model.get_model_object("latent_format")

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        # No autograd through the VAE (its weights are inference tensors); the clone is a normal tensor.
        with torch.inference_mode(False), torch.no_grad():
            return latent_format.process_in(vae.encode(pixels[..., :3]).float()).clone()

    return dm, family, encode, text_function(clip, dm.text_embedding[0].in_features)


def train_dtype(cfg: TrainConfig) -> torch.dtype:
    """The frozen base's dtype for cfg.precision on ComfyUI's device (a ValueError for an unknown one)."""
    return compute_dtype(cfg.precision, comfy.model_management.get_torch_device())


def run(host: tuple, cfg: TrainConfig, progress: Progress | None = None, overwrite=False, restart=False,
        world: World = ONE):  # fmt: skip
    """Trains in this process on `host` = host_functions(model, vae, clip, train_dtype(cfg)); under torchrun
    (the CLI) `world` says which rank it is. The host's MODEL is not needed from here on: the trainer trains
    its own copy of the DiT."""
    device = comfy.model_management.get_torch_device()
    dm, family, encode, text = host
    dm.to(device)
    cfg = replace(cfg, spatial_stride=family.spatial_stride)

    def on_step(step, entry):
        if progress is not None:
            progress.set(step, cfg.steps)

    check = progress.check if progress is not None else None
    # ComfyUI runs nodes under inference_mode; training needs autograd back on.
    with torch.inference_mode(False), torch.enable_grad(), training_mode():
        return train(cfg, dm, encode, text, device, on_step, check, overwrite=overwrite, restart=restart,
                     world=world)  # fmt: skip


class AdapterTrainer(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSR_Trainer",
            display_name="PatchVSR Adapter Trainer",
            category=CATEGORY,
            description="Trains a PatchVSR adapter on a folder of HR videos (and images) with the connected Wan model frozen "
            "except LoRA, and saves it to models/patchvsr. Checkpoints go to models/patchvsr/<name>.ckpt; run again "
            "with the same settings to resume (also after a cancel or a restart).",
            is_output_node=True,
            inputs=[
                io.Model.Input(
                    "model", tooltip="The Wan T2V model to train the adapter for (it is copied, never changed)."
                ),
                io.Vae.Input("vae", tooltip="The model family's VAE; latents are cached so it runs once per clip."),
                io.String.Input(
                    "data_folder",
                    default="",
                    tooltip="Folder of HR videos/images; a .txt beside a clip is its caption.",
                ),
                io.String.Input(
                    "adapter_name",
                    default="my_patchvsr_adapter",
                    tooltip="File name (without .safetensors) in models/patchvsr; its checkpoints go to <name>.ckpt "
                    "beside it. Letters, digits, '_', '-', '.', spaces.",
                ),
                io.Int.Input("steps", default=D.steps, min=1, max=10_000_000, tooltip="Optimiser steps."),
                io.Float.Input(
                    "learning_rate",
                    default=D.lr,
                    min=1e-7,
                    max=1e-1,
                    step=1e-6,
                    round=1e-7,
                    tooltip="AdamW learning rate (paper: 1e-5).",
                ),
                io.Int.Input(
                    "lora_rank",
                    default=D.lora_rank,
                    min=1,
                    max=256,
                    tooltip="Rank of the LoRA on the base's attention and FFN.",
                ),
                io.Int.Input(
                    "crop_width",
                    default=0,
                    min=0,
                    max=4096,
                    step=16,
                    tooltip="Training crop width in pixels; 0 = the model's native width.",
                ),
                io.Int.Input(
                    "crop_height",
                    default=0,
                    min=0,
                    max=4096,
                    step=16,
                    tooltip="Training crop height in pixels; 0 = the model's native height.",
                ),
                io.Int.Input(
                    "max_frames",
                    default=D.max_frames,
                    min=1,
                    max=1025,
                    step=4,
                    tooltip="Frames read per clip (1 + 4k).",
                ),
                io.Int.Input(
                    "checkpoint_every",
                    default=D.ckpt_every,
                    min=1,
                    max=1_000_000,
                    tooltip="Steps between checkpoints (and resume points).",
                ),
                io.Int.Input(
                    "seed",
                    default=D.seed,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    # Fixed: newer frontends randomize an INT named seed after each run unless told otherwise,
                    # and a run queued again must resume with the same seed.
                    control_after_generate=False,
                    tooltip="Seed of crops, noise and data order.",
                ),
                io.Float.Input(
                    "scale_min",
                    default=D.scale[0],
                    min=1.0,
                    max=8.0,
                    step=0.25,
                    optional=True,
                    tooltip="LR made by down-scaling by s ~ U[scale_min, scale_max] (paper: 1-4; default 1-4.5 covers the workflows' "
                    "factors up to 480p to 4K). Narrow it to the factor you upscale by.",
                ),
                io.Float.Input(
                    "scale_max",
                    default=D.scale[1],
                    min=1.0,
                    max=8.0,
                    step=0.25,
                    optional=True,
                    tooltip="Upper end of the LR down-scale range (at least scale_min; default 4.5, 480p to 4K). "
                    "Stored in the adapter's metadata.",
                ),
                io.Float.Input(
                    "condition_noise_min",
                    default=D.cond_noise[0],
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    optional=True,
                    tooltip="Patch-condition noise augmentation t ~ U[min, max] (paper: 0.2-0.3); the middle is used at inference.",
                ),
                io.Float.Input(
                    "condition_noise_max",
                    default=D.cond_noise[1],
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    optional=True,
                    tooltip="Upper end of the patch-condition noise range (at least condition_noise_min).",
                ),
                io.Int.Input(
                    "accumulate",
                    default=D.accum,
                    min=1,
                    max=4096,
                    optional=True,
                    tooltip="Examples per optimiser step (gradient accumulation): the batch size on one GPU. The "
                    "paper trains with 64 (16 GPUs); the command line tool spreads it over GPUs with torchrun.",
                ),
                io.Combo.Input(
                    "precision",
                    options=list(PRECISIONS),
                    default=D.precision,
                    optional=True,
                    tooltip="Dtype of the frozen base and of the computation (the trained weights stay fp32). auto: "
                    "bf16 where the device has it, fp16 on GPUs older than Ampere.",
                ),
                io.Boolean.Input(
                    "overwrite",
                    default=False,
                    optional=True,
                    tooltip="Replace an existing adapter of this name, and start over if its checkpoints were made "
                    "with other settings. Off: an existing adapter or a differing checkpoint stops the run.",
                ),
                io.Combo.Input(
                    "gca_placement",
                    options=list(GCA_PLACEMENTS),
                    default=D.gca_placement,
                    optional=True,
                    tooltip="Where G-CA (the global context's cross-attention) joins each Wan block. inside: in its text "
                    "cross-attention, sharing its query and output projection (the paper's supplement). after: after the "
                    "block with a query and output projection of its own (about 4% more per sampling step). Recorded in the adapter.",
                ),
                io.Clip.Input(
                    "clip",
                    optional=True,
                    tooltip="The Wan text encoder, for the captions and the null prompt (its encoding of the empty prompt). "
                    "Without it captions are ignored and the null prompt is a zero token.",
                ),
            ],
            outputs=[
                io.String.Output(
                    display_name="adapter_name", tooltip="The saved adapter's file name in models/patchvsr."
                )
            ],
        )

    @classmethod
    def validate_inputs(cls, precision=None, gca_placement=None):
        return widget_errors(cls, precision=precision, gca_placement=gca_placement)

    @classmethod
    def execute(cls, model, vae, data_folder, adapter_name, steps, learning_rate, lora_rank, crop_width, crop_height,
                max_frames, checkpoint_every, seed, scale_min=1.0, scale_max=4.5, condition_noise_min=0.2,
                condition_noise_max=0.3, accumulate=1, precision="auto", overwrite=False,
                clip=None, gca_placement="inside") -> io.NodeOutput:  # fmt: skip
        family = model_family(model)
        for lo_name, lo, hi_name, hi in (("scale_min", scale_min, "scale_max", scale_max),
                                         ("condition_noise_min", condition_noise_min, "condition_noise_max", condition_noise_max)):  # fmt: skip
            if lo > hi:
                raise ValueError(f"{lo_name}: {lo} is above {hi_name} {hi}. Set {lo_name} <= {hi_name}.")
        if not data_folder or not os.path.isdir(data_folder):
            raise ValueError(f"data_folder: '{data_folder}' is not a folder. Give the path of a folder of HR videos.")
        find_clips(data_folder, "data_folder")  # an empty folder is refused before the model is copied
        name = check_name(adapter_name, "adapter_name")
        register_folder()
        out_dir = folder_paths.get_folder_paths(FOLDER)[0]
        crop = (crop_height or family.native_hw[0], crop_width or family.native_hw[1])
        cfg = TrainConfig(
            data=data_folder, out=os.path.join(out_dir, f"{name}.safetensors"),
            # Beside the adapter, not in ComfyUI's temp folder (emptied at start-up: a restart lost the run).
            work=str(run_folder(Path(out_dir) / f"{name}.safetensors")),
            steps=steps, lr=learning_rate, lora_rank=lora_rank, crop_px=crop, max_frames=max_frames,
            ckpt_every=checkpoint_every, seed=seed, scale=(scale_min, scale_max),
            cond_noise=(condition_noise_min, condition_noise_max), accum=accumulate, precision=precision,
            gca_placement=gca_placement,
        )  # fmt: skip
        host = host_functions(model, vae, clip, train_dtype(cfg))
        path, history = run(host, cfg, Progress(steps), overwrite=overwrite)
        return io.NodeOutput(os.path.basename(path))
