"""The adapter trainer's settings (PatchVSR section 4.1): one frozen dataclass that the ComfyUI node, the
command line tool (tools/train_adapter.py, which takes its defaults from here), the latent cache, the run
folder and the loop all read. Nothing here imports torch, so the command line answers --help at once.
"""

from __future__ import annotations

from dataclasses import dataclass

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# Where G-CA joins each base block (AdapterConfig.gca_in_cross_attention): inside its text cross-attention
# (the supplement's placement, the default) or after the block with its own query and output projection.
GCA_PLACEMENTS = ("inside", "after")


@dataclass(frozen=True)
class TrainConfig:
    data: str  # folder of HR videos / images (sidecar .txt captions)
    out: str  # the final adapter .safetensors
    work: str  # latent cache and checkpoints (run_folder(out) from the node and by default from the CLI)
    steps: int = 2000
    lr: float = 1e-5  # paper: AdamW 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm (0 = off): one bad batch must not undo the run
    crop_px: tuple[int, int] = (480, 832)  # crop area at the base model's native size (h, w)
    aspect: tuple[float, float] = (0.5, 2.0)  # crop aspect range (paper)
    max_frames: int = 81  # frames read per clip (1 + 4k)
    # LR down-scale s ~ U[lo, hi]. The paper draws from [1, 4]; the workflows upscale up to 4.5x (480p -> 4K),
    # and a factor outside the trained range is an extrapolation of the scale micro-condition.
    scale: tuple[float, float] = (1.0, 4.5)
    variants: int = 2  # LR versions (different s) cached per clip; one when `scale` is a single factor
    cond_noise: tuple[float, float] = (0.2, 0.3)  # patch-condition noise augmentation t (paper)
    null_prompt: float = 0.1  # probability of the null prompt (paper: 10%)
    val_fraction: float = 0.1  # clips held out for the validation loss (at least one when > 1 clip)
    val_every: int = 100
    ckpt_every: int = 200
    seed: int = 0
    lora_rank: int = 16
    patch_blocks: int = 0  # 0 = the AdapterConfig default (1/6 of the base depth)
    global_blocks: int = 0  # 0 = default (1/10, at least one per level)
    grad_checkpointing: bool = True
    spatial_stride: int = 8  # pixels per latent cell (8 Wan 2.1, 16 Wan 2.2 TI2V-5B)
    accum: int = 1  # examples per process per optimiser step; global batch = accum x processes (paper: 64)
    # The frozen base's weights and the compute dtype (autocast); the trained weights and AdamW stay fp32.
    # auto: bf16 where the device has it (CUDA since Ampere, the CPU), fp16 on older CUDA GPUs.
    precision: str = "auto"
    shard: bool = False  # FSDP2: shard the adapter, its gradients and AdamW over the processes (14B)
    gca_placement: str = "inside"  # one of GCA_PLACEMENTS; recorded in the adapter file's config


# TrainConfig fields that do not change the weights a step produces: a run may be resumed with other
# values (train longer, checkpoint more often, another split of the same global batch over GPUs and
# accumulation steps, sharded or not). Every other field must match the checkpoint's; the global batch
# (accum x processes) is part of the identity instead of accum (models/runs.py run_identity).
RESUMABLE_FIELDS = {"steps", "val_every", "ckpt_every", "out", "work", "accum", "shard"}
