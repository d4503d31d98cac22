"""Adapter trainer node, and the host glue the command line tool (nodes/train_cli.py) shares with it."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import comfy.model_management
import folder_paths
import torch
from comfy_api.latest import io

from ..models.adapter import plain_copy
from ..models.data import find_clips
from ..models.train import TrainConfig, check_name, run_folder, train
from .adapter import FOLDER, register_folder
from .host import Progress, check_vae, model_family, real_weight, training_mode
from .sockets import CATEGORY


def host_functions(model, vae, clip=None):
    """(frozen DiT copy, encode, text) for the trainer from ComfyUI objects. The DiT is copied so
    the LoRA hooks and training never touch the artist's model."""
    family = model_family(model)
    check_vae(vae, family)
    with torch.inference_mode(False):
        # ComfyUI loads weights under inference_mode; autograd refuses such tensors, so the copy gets
        # ordinary float32 tensors, read as real numbers whatever the model's format (fp8, scaled fp8,
        # quantized), in stock layers (a deep copy would keep fp8 storage and the host's scaling ops).
        dm = plain_copy(model.model.diffusion_model, torch.float32, real_weight)
    latent_format = model.get_model_object("latent_format")

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        # No autograd through the VAE (its weights are inference tensors); the clone is a normal tensor.
        with torch.inference_mode(False), torch.no_grad():
            return latent_format.process_in(vae.encode(pixels[..., :3]).float()).clone()

    def text(caption: str) -> torch.Tensor:
        if clip is None or not caption:
            return torch.zeros(1, 1, dm.text_embedding[0].in_features)  # the null prompt
        return clip.encode_from_tokens(clip.tokenize(caption)).float()

    return dm, family, encode, text


def run(model, vae, clip, cfg: TrainConfig, progress: Progress | None = None, overwrite=False, restart=False):
    dm, family, encode, text = host_functions(model, vae, clip)
    device = comfy.model_management.get_torch_device()
    dm.to(device)
    cfg = replace(cfg, spatial_stride=family.spatial_stride)

    def on_step(step, entry):
        if progress is not None:
            progress.set(step, cfg.steps)

    check = progress.check if progress is not None else None
    # ComfyUI runs nodes under inference_mode; training needs autograd back on.
    with torch.inference_mode(False), torch.enable_grad(), training_mode():
        return train(cfg, dm, encode, text, device, on_step, check, overwrite=overwrite, restart=restart)


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
                io.Int.Input("steps", default=2000, min=1, max=10_000_000, tooltip="Optimiser steps."),
                io.Float.Input(
                    "learning_rate",
                    default=1e-5,
                    min=1e-7,
                    max=1e-1,
                    step=1e-6,
                    round=1e-7,
                    tooltip="AdamW learning rate (paper: 1e-5).",
                ),
                io.Int.Input(
                    "lora_rank", default=16, min=1, max=256, tooltip="Rank of the LoRA on the base's attention and FFN."
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
                    "max_frames", default=81, min=1, max=1025, step=4, tooltip="Frames read per clip (1 + 4k)."
                ),
                io.Int.Input(
                    "checkpoint_every",
                    default=200,
                    min=1,
                    max=1_000_000,
                    tooltip="Steps between checkpoints (and resume points).",
                ),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, tooltip="Seed of crops, noise and data order."
                ),
                io.Float.Input(
                    "scale_min",
                    default=1.0,
                    min=1.0,
                    max=8.0,
                    step=0.25,
                    optional=True,
                    tooltip="LR made by down-scaling by s ~ U[scale_min, scale_max] (paper: 1-4). Narrow it to the factor you upscale by.",
                ),
                io.Float.Input(
                    "scale_max",
                    default=4.0,
                    min=1.0,
                    max=8.0,
                    step=0.25,
                    optional=True,
                    tooltip="Upper end of the LR down-scale range (at least scale_min).",
                ),
                io.Float.Input(
                    "condition_noise_min",
                    default=0.2,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    optional=True,
                    tooltip="Patch-condition noise augmentation t ~ U[min, max] (paper: 0.2-0.3); the middle is used at inference.",
                ),
                io.Float.Input(
                    "condition_noise_max",
                    default=0.3,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    optional=True,
                    tooltip="Upper end of the patch-condition noise range (at least condition_noise_min).",
                ),
                io.Boolean.Input(
                    "overwrite",
                    default=False,
                    optional=True,
                    tooltip="Replace an existing adapter of this name, and start over if its checkpoints were made "
                    "with other settings. Off: an existing adapter or a differing checkpoint stops the run.",
                ),
                io.Clip.Input(
                    "clip",
                    optional=True,
                    tooltip="Optional text encoder for the captions; without it every caption is the null prompt.",
                ),
            ],
            outputs=[
                io.String.Output(
                    display_name="adapter_name", tooltip="The saved adapter's file name in models/patchvsr."
                )
            ],
        )

    @classmethod
    def execute(cls, model, vae, data_folder, adapter_name, steps, learning_rate, lora_rank, crop_width, crop_height,
                max_frames, checkpoint_every, seed, scale_min=1.0, scale_max=4.0, condition_noise_min=0.2,
                condition_noise_max=0.3, overwrite=False, clip=None) -> io.NodeOutput:  # fmt: skip
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
            cond_noise=(condition_noise_min, condition_noise_max),
        )  # fmt: skip
        path, history = run(model, vae, clip, cfg, Progress(steps), overwrite=overwrite)
        return io.NodeOutput(os.path.basename(path))
