"""The adapter trainer (PatchVSR section 4.1): rectified-flow velocity matching on HR patch latents with
the base frozen except LoRA. One implementation for the command line and the ComfyUI node: the host glue
passes in the base DiT (any module with Wan's attributes) and a VAE encode function.

Dimension legend: C latent channels, T latent frames, H/W latent rows/columns, D model width.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from . import adapter_runtime as rt
from .adapter import FORMAT_VERSION, AdapterConfig, PatchVSRAdapter
from .adapter_file import save_adapter
from .context import location_mask
from .data import Clip, crop_size, degrade, find_clips, read_clip
from .distributed import ONE, World
from .flow import noise_to
from .plan import Box, Kind
from .video import resize_frames

log = logging.getLogger(__name__)
# encode(pixels [N, H, W, 3] in [0, 1]) -> [1, C, T, h, w] latent in the DiT's input space
EncodeFn = Callable[[torch.Tensor], torch.Tensor]
# text(caption) -> [1, L, text_dim] conditioning; "" is the null prompt
TextFn = Callable[[str], torch.Tensor]


# Files inside a run folder are safetensors but never named .safetensors: the loader lists models/patchvsr
# recursively, and a checkpoint or a latent cache must not be offered as an adapter.
LATENT_SUFFIX = ".latent"  # ComfyUI's own suffix for a safetensors latent
CKPT_SUFFIX = ".ckpt"
# Checkpoints kept per run: the latest, and the one before in case the latest is from a bad moment. A
# 1.3B checkpoint (weights and AdamW moments) is ~10 GB; keeping every one fills a rented node's disk.
KEEP_CHECKPOINTS = 2
# TrainConfig fields that do not change the weights a step produces: a run may be resumed with other
# values (train longer, checkpoint more often, another split of the same global batch over GPUs and
# accumulation steps, sharded or not). Every other field must match the checkpoint's; the global batch
# (accum x processes) is part of the identity instead of accum.
RESUMABLE_FIELDS = {"steps", "val_every", "ckpt_every", "out", "work", "accum", "shard"}
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# Where G-CA joins each base block (AdapterConfig.gca_in_cross_attention): inside its text cross-attention
# (the supplement's placement, the default) or after the block with its own query and output projection.
GCA_PLACEMENTS = ("inside", "after")
START_OVER = "allow overwrite (the node's overwrite input, --overwrite or --restart on the command line)"
MAX_NAME = 100  # characters; leaves room for the suffixes within any file system's 255
_NAME_CHARS = re.compile(r"[\w.\- ]+")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def check_name(name: str, what: str = "adapter_name") -> str:
    """The adapter's name without .safetensors, or a ValueError saying what is wrong with it. The name
    becomes a file and a folder in models/patchvsr, so it must stay a single, portable file name."""
    stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else name
    fix = "Use letters, digits, '_', '-', '.' and spaces, e.g. 'my_adapter'."
    if not stem.strip():
        raise ValueError(f"{what}: the name is empty. {fix}")
    if any(c in stem for c in "/\\:") or stem in (".", ".."):
        raise ValueError(
            f"{what}: '{name}' is a path, not a file name. Give only a name; the file goes in models/patchvsr."
        )
    if len(stem) > MAX_NAME:
        raise ValueError(f"{what}: '{stem[:20]}...' is {len(stem)} characters long; the limit is {MAX_NAME}.")
    if not _NAME_CHARS.fullmatch(stem):
        bad = sorted({c for c in stem if not _NAME_CHARS.fullmatch(c)})
        raise ValueError(f"{what}: '{name}' contains {' '.join(repr(c) for c in bad)}. {fix}")
    if stem[0] in ".- " or stem[-1] in ". " or stem.split(".")[0].lower() in _RESERVED:
        raise ValueError(
            f"{what}: '{name}' starts with '.', '-' or a space, ends with '.' or a space, or is a reserved "
            f"device name (CON, NUL, ...). {fix}"
        )
    return stem


def run_folder(out: Path) -> Path:
    """Latents and checkpoints of the run that writes `out`: beside it, so a host restart (ComfyUI empties
    its temp folder at start-up) or a new machine with the same models folder finds them."""
    return Path(out).with_suffix(CKPT_SUFFIX)


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    # A crash or a full disk mid-write leaves a .tmp file, never a truncated file under the real name
    # (a truncated latest checkpoint would make every later resume fail).
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def _short_reason(e: Exception) -> str:
    """ffmpeg's error is a 3 KB banner; its last line says what is wrong."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    last = re.sub(r"^\[[^\]]*\]\s*", "", lines[-1]) if lines else type(e).__name__
    return last if len(last) <= 120 else last[:117] + "..."


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


@dataclass
class Sample:
    hr: torch.Tensor  # [1, C, T, H, W]
    lr: torch.Tensor  # [1, C, T, H, W] latent of the degraded clip at full size
    glob: torch.Tensor  # [1, C, T, gh, gw] latent of the degraded clip resized to the crop size
    scale: float
    caption: str


def cache_latents(cfg: TrainConfig, clips: list[Clip], encode: EncodeFn, on_clip=None, check=None,
                  world: World = ONE) -> list[Path]:  # fmt: skip
    """Encodes every clip's HR, LR variants and global view once; later runs reuse the files. A clip that
    cannot be read is skipped with one line; only a folder with no readable clip fails. With several
    processes each encodes every world.size-th clip, then all list the files written."""
    cache = Path(cfg.work) / "latents"
    cache.mkdir(parents=True, exist_ok=True)
    gen = random.Random(cfg.seed)
    per_clip = []
    for i, clip in enumerate(clips):
        if check:  # a cancel between clips: the finished ones are on disk (written atomically) and reused
            check()
        # Drawn before the clip is read so one unreadable clip does not change the others' LR scales.
        # A fixed factor (--scale S S) makes every variant the same LR clip: one is encoded, not copies.
        scales = [gen.uniform(*cfg.scale) for _ in range(cfg.variants if cfg.scale[0] != cfg.scale[1] else 1)]
        # A stable digest (not hash(), which changes per process) so a restarted run finds its cache.
        # Everything the cached tensors depend on: a changed --scale must not reuse LR made at the old one.
        ident = (
            f"{clip.path.resolve()}|{clip.path.stat().st_mtime_ns}|{cfg.max_frames}|{cfg.crop_px}|{cfg.seed}"
            f"|{cfg.scale}|{cfg.variants}"
        )
        key = f"{clip.path.stem}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}"
        variants = [cache / f"{key}-v{v}{LATENT_SUFFIX}" for v in range(len(scales))]
        per_clip.append(variants)
        if i % world.size == world.rank and not all(p.exists() for p in variants):
            try:
                hr = read_clip(clip, cfg.max_frames)
            except (OSError, RuntimeError, ValueError) as e:  # ffmpeg/PIL failures, no frames
                log.warning("skipped '%s': %s", clip.path.name, _short_reason(e))
                if on_clip:
                    on_clip(i + 1, len(clips))
                continue
            hr_latent = None  # every variant shares the HR clip, the largest encode: once per clip
            for path, s in zip(variants, scales):
                if not path.exists():
                    if hr_latent is None:
                        hr_latent = encode(hr)
                    lr = degrade(hr, s)
                    tensors = {"hr": hr_latent, "lr": encode(lr), "glob": encode(resize_frames(lr, cfg.crop_px))}
                    tensors = {k: t.float().contiguous().cpu() for k, t in tensors.items()}
                    _save_atomic(tensors, path, {"scale": str(s), "caption": clip.caption})
        if on_clip:
            on_clip(i + 1, len(clips))
    world.barrier()  # every rank's share is on disk
    # A clip is readable when all its variants are on disk (written by this run or an earlier one).
    readable = [v for v in per_clip if all(p.exists() for p in v)]
    paths = [p for v in readable for p in v]
    skipped = len(clips) - len(readable)
    if skipped and not readable:
        raise ValueError(
            f"data: none of the {len(clips)} clips in '{cfg.data}' could be read (see the lines above). "
            "Give a folder of videos ffmpeg can decode, or images."
        )
    if skipped and world.main:
        log.warning("skipped %d of %d clips that could not be read; training on %d", skipped, len(clips),
                    len(readable))  # fmt: skip
    return paths


def load_sample(path: Path) -> Sample:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    t = load_file(str(path))
    return Sample(t["hr"], t["lr"], t["glob"], float(meta["scale"]), meta.get("caption", ""))


def run_identity(cfg: TrainConfig, dm, clips: Sequence[str] = (), world_size: int = 1) -> dict[str, str]:
    """What a checkpoint must match to be resumed: every setting that changes the weights, the data folder
    and its clips, the global batch, the adapter file format, and the base model (its dims and a fingerprint
    of its weights)."""
    ident = {k: json.dumps(v) for k, v in asdict(cfg).items() if k not in RESUMABLE_FIELDS}
    ident["data"] = json.dumps(str(Path(cfg.data).resolve()))
    # 8 GPUs x accum 1 and 4 GPUs x accum 2 train the same weights (see Trainer.train_step).
    ident["batch"] = json.dumps(cfg.accum * world_size)
    # A checkpoint of an older adapter format holds weights trained for other inputs (adapter_file.py).
    ident["adapter_format"] = json.dumps(FORMAT_VERSION)
    # The patch embedding and a slice of every block weight: a fine-tune or another format of the base
    # changes them, and hashing slices keeps this cheap on a 14B model.
    parts = [dm.patch_embedding.weight.flatten()] + [p.flatten()[:64] for b in dm.blocks for p in b.parameters()]
    digest = hashlib.sha1()
    for t in parts:  # rounded to bf16: the same base held in fp32, fp16 or bf16 has one fingerprint
        digest.update(t.detach().to(torch.bfloat16).float().cpu().numpy().tobytes())
    ident["model"] = (
        f"dim {dm.dim}, {dm.num_layers} layers, {dm.num_heads} heads, {dm.in_dim} channels, "
        f"weights {digest.hexdigest()[:12]}"
    )
    names = sorted(clips)
    ident["clips"] = f"{len(names)} clips, names {hashlib.sha1(json.dumps(names).encode()).hexdigest()[:12]}"
    return ident


def identity_diff(saved: dict[str, str], now: dict[str, str]) -> list[str]:
    """'field now (checkpoint: then)' for every field that differs."""
    return [
        f"{k} {now.get(k, 'absent')} (checkpoint: {saved.get(k, 'absent')})"
        for k in sorted(set(saved) | set(now))
        if saved.get(k) != now.get(k)
    ]


def checkpoints(work: Path) -> list[Path]:
    return sorted((Path(work) / "checkpoints").glob(f"step_*{CKPT_SUFFIX}"))


def checkpoint_identity(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("identity", "{}"))


def mismatch_message(path: Path, diff: list[str]) -> str:
    return (
        f"checkpoint '{path.name}' in '{path.parent.parent}' is from a run with other settings: {'; '.join(diff)}. "
        f"Run with the checkpoint's settings to resume it, choose another adapter name, or {START_OVER} to "
        "start over (its checkpoints are deleted)."
    )


def prepare_run(cfg: TrainConfig, identity: dict[str, str], overwrite: bool = False, restart: bool = False) -> None:
    """Before any caching or training: refuse to replace a finished adapter unless asked, and check the
    run folder's latest checkpoint against this run (resume it, start over, or say what differs)."""
    out = Path(cfg.out)
    if out.exists() and not overwrite:
        raise ValueError(
            f"adapter '{out.name}' already exists in '{out.parent}'. Choose another adapter name, or allow "
            "overwrite (the node's overwrite input, --overwrite on the command line) to replace it."
        )
    found = checkpoints(Path(cfg.work))
    if not found:
        return
    diff = identity_diff(checkpoint_identity(found[-1]), identity)
    if diff and not (overwrite or restart):
        raise ValueError(mismatch_message(found[-1], diff))
    if diff or restart:
        why = "asked to restart" if restart else f"other settings: {'; '.join(diff)}"
        log.warning("starting over: deleting %d checkpoints in '%s' (%s)", len(found), cfg.work, why)
        for p in found:
            p.unlink()


def compute_dtype(precision: str, device) -> torch.dtype:
    """The frozen base's dtype and the autocast dtype for `precision` on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: '{precision}' is not one of {', '.join(PRECISIONS)}.")
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":  # fp16 before Ampere (V100, T4), which have no bf16
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # The CPU has bf16 kernels; other devices are untested, and fp32 is the one dtype they all run.
        return torch.bfloat16 if device.type == "cpu" else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


class _Loss(nn.Module):
    """One example's loss as a module call: DDP and FSDP act on the forward of the module they wrap. The
    frozen base is not a submodule: DDP would broadcast it, FSDP would shard it with the adapter."""

    def __init__(self, trainer: Trainer):
        super().__init__()
        self.adapter = trainer.adapter
        self._trainer = [trainer]  # a list, so nn.Module does not register the trainer's modules

    def forward(self, sample: Sample, gen: torch.Generator) -> torch.Tensor:
        return self._trainer[0].loss(sample, gen)


def _full(t: torch.Tensor, keep: bool = True) -> torch.Tensor | None:
    """The whole tensor of a (possibly FSDP-sharded) parameter or optimiser state, on the CPU; None where
    not `keep` (the ranks that write nothing: 8 CPU copies of a 14B adapter's state would not fit a node's
    memory). A collective for a sharded one: every rank calls it, in the same order."""
    from torch.distributed.tensor import DTensor

    t = t.full_tensor() if isinstance(t, DTensor) else t
    return t.detach().cpu().contiguous() if keep else None


def _like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` (from a checkpoint) laid out as `like`: this rank's shard of it where `like` is sharded."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    full = full.to(device=like.device, dtype=like.dtype)
    if isinstance(like, DTensor):  # every rank holds the whole tensor: each keeps its shard, no traffic
        return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)
    return full


class Trainer:
    """Holds the base DiT (frozen), the adapter (trainable), the optimiser and the RNG; `run()` trains
    to cfg.steps, resuming from the latest checkpoint in cfg.work if there is one.

    With world.size > 1 (torchrun) every rank builds the same adapter from the same seed and draws the same
    global batch; rank r computes examples [r * accum, (r + 1) * accum) of it and the gradients are averaged
    (DDP, or FSDP2 with cfg.shard), so the weights follow the same path as one process with accum x size
    examples per step. Rank 0 alone writes files."""

    def __init__(self, cfg: TrainConfig, dm, text: TextFn, device="cpu", adapter_cfg: AdapterConfig | None = None,
                 clips: Sequence[str] = (), world: World = ONE):  # fmt: skip
        self.cfg, self.dm, self.text, self.device, self.world = cfg, dm, text, torch.device(device), world
        if cfg.accum < 1:
            raise ValueError(f"accum: {cfg.accum} examples per step; give at least 1.")
        if cfg.gca_placement not in GCA_PLACEMENTS:
            raise ValueError(f"gca_placement: '{cfg.gca_placement}' is not one of {', '.join(GCA_PLACEMENTS)}.")
        self.identity = run_identity(cfg, dm, clips, world.size)
        self.dtype = compute_dtype(cfg.precision, self.device)
        if cfg.shard and self.dtype == torch.float16:
            raise ValueError("precision: fp16 with shard needs a sharded loss scaler; use bf16 or fp32 with shard.")
        # The frozen base in the compute dtype (2 bytes a weight), its patch embedding in fp32 as the host
        # keeps it; the caller gives a copy the trainer may change (the node never passes the artist's model).
        dm.requires_grad_(False)
        dm.to(device=self.device, dtype=self.dtype)
        dm.patch_embedding.float()
        self.amp = None if self.dtype == torch.float32 else self.dtype
        self.adapter_cfg = adapter_cfg or AdapterConfig.for_base(
            dm.dim, dm.num_layers, dm.num_heads, dm.in_dim, patch_k=cfg.patch_blocks or None,
            global_k=cfg.global_blocks or None, lora_rank=cfg.lora_rank, lora_alpha=float(cfg.lora_rank),
            patch_noise_t=sum(cfg.cond_noise) / 2,  # inference uses the middle of the trained range
            gca_in_cross_attention=cfg.gca_placement == "inside",
        )  # fmt: skip
        torch.manual_seed(cfg.seed)  # adapter init (LoRA down matrices) is part of the run's identity
        # Trained weights in fp32 (autocast computes in self.dtype): AdamW updates of 1e-5 vanish in bf16.
        self.adapter = PatchVSRAdapter(self.adapter_cfg, dm.blocks, dm.patch_embedding).to(self.device).float()
        self.adapter.set_grad_checkpointing(self.cfg.grad_checkpointing)
        self.adapter.train()
        # Branch blocks start as copies of frozen base blocks but are trained (paper: branches are trained).
        self.adapter.requires_grad_(True)
        for lora in self.adapter.lora.values():
            lora.alpha.requires_grad_(False)
        # LoRA on the frozen base through forward hooks: the caller gives a DiT the trainer may hook
        # (the ComfyUI node passes a copy, never the artist's model).
        self.hooks = rt.add_lora_hooks(self.adapter, dm.blocks)
        self.module = _Loss(self)
        self.model = self._distribute(self.module)
        # After _distribute: FSDP replaces the parameters with sharded ones.
        self.params = [p for p in self.adapter.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        # fp16 overflows/underflows without loss scaling; bf16 and fp32 need none (the scaler is then a no-op).
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.saved_step = -1  # the step of the last checkpoint written or loaded
        self.history: list[dict] = []

    def _distribute(self, module: nn.Module) -> nn.Module:
        if not self.world.active:
            return module
        if not self.cfg.shard:
            from torch.nn.parallel import DistributedDataParallel

            # Gradients as views into DDP's buckets: no second fp32 copy of them (4 bytes per trained weight).
            return DistributedDataParallel(module, gradient_as_bucket_view=True)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.type, (self.world.size,))
        # One unit per large module called through its forward (copied blocks, G-CA, projections, merges):
        # each is gathered only while it runs. The rest (LoRA, micro-conditions, embeddings; small) belongs
        # to the root unit, which stays gathered from forward to backward, so the LoRA hooks that read
        # their weights outside any forward of their own see whole tensors.
        a = self.adapter
        units = [*a.patch_branch.blocks, *a.patch_branch.proj, *(b for lvl in a.global_branch.levels for b in lvl),
                 *a.global_branch.merge, *a.gca]  # fmt: skip
        # FSDP2 warns that these modules return views (an in-place op on one would skip its all-gather in
        # the backward). Their outputs are only used out of place; tests/unit/test_train.py
        # checks that sharded training follows one process's losses.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        for unit in units:
            fully_shard(unit, mesh=mesh)
        fully_shard(module, mesh=mesh)
        return module

    # -- one example --------------------------------------------------------------------------------------
    def _uniform(self, lo: float, hi: float, gen: torch.Generator) -> float:
        return lo + (hi - lo) * torch.rand((), generator=gen).item()

    def _example(self, sample: Sample, gen: torch.Generator):
        """A random crop (aspect in cfg.aspect, area of cfg.crop_px) and every input of the adapter."""
        s = self.cfg.spatial_stride
        _, _, T, H, W = sample.hr.shape
        area = (self.cfg.crop_px[0] // s) * (self.cfg.crop_px[1] // s)
        aspect = math.exp(self._uniform(math.log(self.cfg.aspect[0]), math.log(self.cfg.aspect[1]), gen))
        h, w = crop_size(area, aspect, H, W, 2)
        y0 = int(torch.randint(0, H - h + 1, (), generator=gen))
        x0 = int(torch.randint(0, W - w + 1, (), generator=gen))
        box = Box(Kind.BASE, y0, y0 + h, x0, x0 + w)
        z0 = sample.hr[..., y0 : y0 + h, x0 : x0 + w]
        cond = sample.lr[..., y0 : y0 + h, x0 : x0 + w]
        t = torch.rand((1,), generator=gen).clamp(1e-3, 1 - 1e-3)
        t_c = self._uniform(*self.cfg.cond_noise, gen)
        eps = torch.randn(z0.shape, generator=gen)
        z_t = noise_to(z0, t.item(), eps)
        cond = noise_to(cond, t_c, torch.randn(cond.shape, generator=gen))
        g = noise_to(sample.glob, self.adapter_cfg.global_noise_t, torch.randn(sample.glob.shape, generator=gen))
        mask = location_mask(box, (H, W), tuple(sample.glob.shape[-2:]))[None]
        caption = "" if torch.rand((), generator=gen).item() < self.cfg.null_prompt else sample.caption
        micro = rt.micro_vector(sample.scale, t_c, (y0 / H, x0 / W, (y0 + h) / H, (x0 + w) / W), 1, "cpu")
        return z_t, t, eps - z0, cond, g, rt.location_mask_volume(mask, T), micro, caption

    def loss(self, sample: Sample, gen: torch.Generator) -> torch.Tensor:
        z_t, t, v_target, cond, g, mask, micro, caption = (
            a.to(self.device) if isinstance(a, torch.Tensor) else a for a in self._example(sample, gen)
        )
        # The base's inputs in its dtype, as the host feeds it at inference (the residual stream then stays
        # in it: half the activation memory of fp32); flow times, targets and micro-conditions stay fp32.
        z_t, cond, g, mask = (a.to(self.dtype) for a in (z_t, cond, g, mask))
        context = self.text(caption).to(self.device, self.dtype)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            # The global branch reads the base's prompt (null 10% of the time, for both: paper, Text Prompts).
            call = rt.compute_call(self.dm, self.adapter, cond, micro, g, mask, context)
            v = rt.forward(self.dm, self.adapter, z_t, t, context, call, checkpoint=self.cfg.grad_checkpointing)
        return F.mse_loss(v.float(), v_target.float())

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _ckpt_dir(self) -> Path:
        return Path(self.cfg.work) / "checkpoints"

    @property
    def sharded(self) -> bool:
        return self.cfg.shard and self.world.active

    def _full_state(self) -> dict[str, torch.Tensor]:
        """Whole adapter weights and AdamW moments on rank 0's CPU. Sharded, every rank must call this, in
        step: the shards are gathered."""
        keep = self.world.main
        tensors = {f"adapter.{k}": _full(v, keep) for k, v in self.adapter.state_dict().items()}
        names = {id(p): n for n, p in self.adapter.named_parameters()}
        for p in self.params:
            st = self.opt.state.get(p, {})
            for k in ("exp_avg", "exp_avg_sq", "step"):
                if k in st:
                    tensors[f"opt.{names[id(p)]}.{k}"] = _full(torch.as_tensor(st[k]), keep)
        return tensors

    def save_checkpoint(self) -> Path:
        """Adapter weights, AdamW moments, step, loss history and the RNG state: enough to resume exactly.
        Written by rank 0 only; the RNG is the same on every rank (all draw the same global batch)."""
        path = self._ckpt_dir() / f"step_{self.step:07d}{CKPT_SUFFIX}"
        self.saved_step = self.step
        tensors = self._full_state() if self.world.main or self.sharded else {}
        if not self.world.main:
            return path
        tensors["rng"] = self.gen.get_state()
        meta = {
            "step": str(self.step),
            "history": json.dumps(self.history),
            "config": json.dumps(asdict(self.cfg), default=str),
            "identity": json.dumps(self.identity),
        }
        if self.scaler.is_enabled():
            meta["grad_scaler"] = json.dumps({k: float(v) for k, v in self.scaler.state_dict().items()})
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_atomic(tensors, path, meta)
        for old in checkpoints(Path(self.cfg.work))[:-KEEP_CHECKPOINTS]:
            old.unlink()
        return path

    def load_checkpoint(self, path: Path) -> None:
        """Every rank reads the file (the run folder must be on storage they all see, as on one node)."""
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        # Checked before any tensor is loaded: another rank would otherwise fail as a raw size mismatch,
        # another data folder or seed would silently continue the wrong run.
        diff = identity_diff(json.loads(meta.get("identity", "{}")), self.identity)
        if diff:
            raise ValueError(mismatch_message(Path(path), diff))
        t = load_file(str(path))
        own = dict(self.adapter.named_parameters()) | dict(self.adapter.named_buffers())
        saved = {k[len("adapter.") :] for k in t if k.startswith("adapter.")}
        if saved != set(own):
            raise ValueError(
                f"checkpoint '{Path(path).name}' holds other adapter weights than this version of the pack "
                f"builds ({len(saved ^ set(own))} differ). Restart the run (--restart or overwrite)."
            )
        with torch.no_grad():
            for name, v in own.items():
                v.copy_(_like(t[f"adapter.{name}"], v))
        for name, p in self.adapter.named_parameters():
            if f"opt.{name}.exp_avg" in t:
                st = {k: _like(t[f"opt.{name}.{k}"], p) for k in ("exp_avg", "exp_avg_sq")}
                self.opt.state[p] = st | {"step": t[f"opt.{name}.step"].clone()}
        self.gen.set_state(t["rng"])
        if "grad_scaler" in meta and self.scaler.is_enabled():
            self.scaler.load_state_dict(json.loads(meta["grad_scaler"]))
        self.step = self.saved_step = int(meta["step"])
        self.history = json.loads(meta["history"])

    def latest_checkpoint(self) -> Path | None:
        found = checkpoints(Path(self.cfg.work))
        return found[-1] if found else None

    # -- the loop -----------------------------------------------------------------------------------------
    def validation_loss(self, samples: list[Sample]) -> float:
        """The mean loss of 4 fixed crops and noises per held-out sample, split over the ranks."""
        jobs = [(s, k) for s in samples for k in range(4)]
        per_rank = -(-len(jobs) // self.world.size)
        total = 0.0
        with torch.no_grad():
            for j in range(per_rank):  # the same count on every rank: FSDP gathers in every forward
                i = self.world.rank + j * self.world.size
                # One seed per job: the same crop and noise each time, whichever rank computes it.
                gen = torch.Generator().manual_seed((10_000 + self.cfg.seed) * 1_000_003 + i % len(jobs))
                loss = self.model(jobs[i % len(jobs)][0], gen)
                total += loss.item() if i < len(jobs) else 0.0
        return self.world.sum([total], self.device)[0] / len(jobs)

    def train_step(self, train: list[Sample]) -> float:
        """One optimiser step on a global batch of accum x world.size examples; returns its mean loss."""
        accum, n = self.cfg.accum, self.cfg.accum * self.world.size
        # The global batch is drawn by every rank alike, so which rank computes an example changes nothing.
        picks = torch.randint(0, len(train), (n,), generator=self.gen).tolist()
        seeds = torch.randint(0, 2**62, (n,), generator=self.gen).tolist()
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for j in range(accum):
            i = self.world.rank * accum + j
            # DDP: average the gradients once, after the last example (FSDP reduce-scatters every backward,
            # so its gradients stay sharded while they accumulate).
            last = j == accum - 1 or not hasattr(self.model, "no_sync")
            with nullcontext() if last else self.model.no_sync():
                loss = self.model(train[picks[i]], torch.Generator().manual_seed(seeds[i]))
                # / accum here and the mean over the ranks in the gradient average: the global batch mean.
                self.scaler.scale(loss / accum).backward()
            total += loss.item()
        self.scaler.unscale_(self.opt)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        return self.world.sum([total], self.device)[0] / n

    def run(
        self, train: list[Sample], val: list[Sample], on_step: Callable | None = None, check: Callable | None = None
    ) -> list[dict]:
        last = self.latest_checkpoint()
        if last is not None and self.step == 0:
            self.load_checkpoint(last)
            log.info("resumed from %s at step %d", last.name, self.step)
        if self.step == 0 and val:
            self.history.append({"step": 0, "val": self.validation_loss(val)})
        while self.step < self.cfg.steps:
            stop = None
            if check:
                try:
                    check()
                except BaseException as e:
                    stop = e
            # Every rank stops at the same step (a Ctrl-C may reach them at different moments).
            if self.world.any(stop is not None, self.device):
                # A cancel arrives here, between steps, where the state is whole: keep the work done
                # since the last checkpoint so the next run resumes from this step, bit-exactly.
                if self.step > max(self.saved_step, 0):
                    log.info("interrupted: checkpoint %s", self.save_checkpoint().name)
                raise stop if stop is not None else KeyboardInterrupt("another process was stopped")
            entry = {"step": self.step + 1, "loss": self.train_step(train)}
            self.step += 1
            if val and (self.step % self.cfg.val_every == 0 or self.step == self.cfg.steps):
                entry["val"] = self.validation_loss(val)
            self.history.append(entry)
            if on_step:
                on_step(self.step, entry)
            if self.step % self.cfg.ckpt_every == 0 or self.step == self.cfg.steps:
                self.save_checkpoint()
        return self.history

    def export(self) -> Path:
        """The adapter file, written by rank 0 (every rank must call this: FSDP gathers the shards)."""
        out = Path(self.cfg.out)
        meta = {
            "train_steps": str(self.step),
            # What it was trained for: a workflow that upscales by more than train_scale's upper end asks
            # the scale micro-condition for a value it never saw.
            "train_scale": json.dumps(list(self.cfg.scale)),
            "train_batch": str(self.cfg.accum * self.world.size),
            "train_precision": str(self.dtype).removeprefix("torch."),
        }
        if not self.sharded:
            return save_adapter(self.adapter, out, meta) if self.world.main else out
        full = {k: _full(v, self.world.main) for k, v in self.adapter.state_dict().items()}
        if not self.world.main:
            return out
        # A plain adapter to write the file from: built on the meta device (no memory, no init work), then
        # given the gathered tensors.
        with torch.device("meta"):
            plain = PatchVSRAdapter(self.adapter_cfg, self.dm.blocks, self.dm.patch_embedding,
                                    weight_of=lambda layer, name: getattr(layer, name).to("meta"))  # fmt: skip
        plain.load_state_dict(full, assign=True)
        return save_adapter(plain, out, meta)

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []


def split(paths: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Held-out clips (all variants of a clip go to one side)."""
    clips = sorted({p.name.rsplit("-v", 1)[0] for p in paths})
    random.Random(seed).shuffle(clips)
    n_val = max(1, round(len(clips) * val_fraction)) if len(clips) > 1 else 0
    val = set(clips[:n_val])
    return [p for p in paths if p.name.rsplit("-v", 1)[0] not in val], [
        p for p in paths if p.name.rsplit("-v", 1)[0] in val
    ]


def train(
    cfg: TrainConfig,
    dm,
    encode: EncodeFn,
    text: TextFn,
    device="cpu",
    on_step=None,
    check=None,
    on_clip=None,
    overwrite: bool = False,
    restart: bool = False,
    world: World = ONE,
) -> tuple[Path, list[dict]]:
    """The whole job: find clips, check the run folder (prepare_run), cache latents, split, train (resuming
    if possible), export. overwrite: an existing adapter may be replaced and a checkpoint with other
    settings is deleted; restart: every checkpoint is deleted. Under torchrun every rank calls this with
    its `world` (models/distributed.py); rank 0 alone deletes and writes files."""
    # 1. Everything that can refuse the run, before the hours of caching and training. Rank 0 decides (and
    # deletes checkpoints when starting over); the others get its verdict, so all stop with one message.
    data = Path(cfg.data)
    clips = find_clips(data)
    names = [c.path.relative_to(data).as_posix() for c in clips]
    refused = None
    if world.main:
        try:
            prepare_run(cfg, run_identity(cfg, dm, names, world.size), overwrite, restart)
        except ValueError as e:
            refused = str(e)
    refused = world.broadcast(refused)
    if refused:
        raise ValueError(refused)
    # 2. Latents (unreadable clips skipped), split
    paths = cache_latents(cfg, clips, encode, on_clip, check, world)
    train_paths, val_paths = split(paths, cfg.val_fraction, cfg.seed)
    # 3. Train, resuming from the run folder's latest checkpoint
    trainer = Trainer(cfg, dm, text, device, clips=names, world=world)
    try:
        history = trainer.run(
            [load_sample(p) for p in train_paths], [load_sample(p) for p in val_paths], on_step, check
        )
        # 4. The adapter, written under a temporary name and renamed (save_adapter)
        path = trainer.export()
        world.barrier()  # no rank reports success before the file is there
        return path, history
    finally:
        trainer.close()
