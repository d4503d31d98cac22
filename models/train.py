"""The adapter trainer (PatchVSR section 4.1): rectified-flow velocity matching on HR patch latents with
the base frozen except LoRA. One implementation for the command line and the ComfyUI node: the host glue
passes in the base DiT (any module with Wan's attributes) and a VAE encode function.

The settings are models/train_config.py; the run folder, its identity and checkpoint files models/runs.py;
the latent cache models/latents.py; the collectives and DDP/FSDP models/distributed.py. This module holds
the loss and the loop, and train(), the whole job in order.

Dimension legend: C latent channels, T latent frames, H/W latent rows/columns, D model width.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import adapter_runtime as rt
from .adapter import AdapterConfig, PatchVSRAdapter
from .adapter_file import save_adapter
from .context import location_mask
from .data import crop_size, find_clips
from .distributed import ONE, World, full_tensor, wrap
from .flow import noise_to
from .latents import EncodeFn, Sample, cache_latents, load_sample, split
from .plan import Box, Kind
from .runs import (
    checkpoint_path,
    checkpoints,
    gather_state,
    load_checkpoint,
    prepare_run,
    run_identity,
    save_checkpoint,
    scatter_state,
)
from .train_config import GCA_PLACEMENTS, PRECISIONS, TrainConfig

log = logging.getLogger(__name__)
# text(caption) -> [1, L, text_dim] conditioning; "" is the null prompt
TextFn = Callable[[str], torch.Tensor]


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


def _shard_units(adapter: PatchVSRAdapter) -> list[nn.Module]:
    """The FSDP units of a sharded run: one per large module called through its forward (copied blocks,
    G-CA, projections, merges), each gathered only while it runs. The rest (LoRA, micro-conditions,
    embeddings; small) belongs to the root unit, which stays gathered from forward to backward, so the LoRA
    hooks that read their weights outside any forward of their own see whole tensors."""
    return [*adapter.patch_branch.blocks, *adapter.patch_branch.proj,
            *(b for lvl in adapter.global_branch.levels for b in lvl), *adapter.global_branch.merge,
            *adapter.gca]  # fmt: skip


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
        self.model = wrap(self.module, world, self.device, cfg.shard, _shard_units(self.adapter))
        # After wrap: FSDP replaces the parameters with sharded ones.
        self.params = [p for p in self.adapter.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        # fp16 overflows/underflows without loss scaling; bf16 and fp32 need none (the scaler is then a no-op).
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.saved_step = -1  # the step of the last checkpoint written or loaded
        self.history: list[dict] = []

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

    # -- checkpoints (files, identity and format: models/runs.py) ------------------------------------------
    @property
    def sharded(self) -> bool:
        return self.cfg.shard and self.world.active

    def save_checkpoint(self) -> Path:
        """Adapter weights, AdamW moments, step, loss history and the RNG state: enough to resume exactly.
        Written by rank 0 only; the RNG is the same on every rank (all draw the same global batch). Sharded,
        every rank must call this, in step: the shards are gathered."""
        path = checkpoint_path(Path(self.cfg.work), self.step)
        self.saved_step = self.step
        tensors = gather_state(self.adapter, self.opt, self.world.main) if self.world.main or self.sharded else {}
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
        return save_checkpoint(path, tensors, meta)

    def load_checkpoint(self, path: Path) -> None:
        """Every rank reads the file (the run folder must be on storage they all see, as on one node)."""
        tensors, meta = load_checkpoint(path, self.identity)
        scatter_state(tensors, self.adapter, self.opt, path)
        self.gen.set_state(tensors["rng"])
        if "grad_scaler" in meta and self.scaler.is_enabled():
            self.scaler.load_state_dict(json.loads(meta["grad_scaler"]))
        self.step = self.saved_step = int(meta["step"])
        self.history = json.loads(meta["history"])

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
        found = checkpoints(Path(self.cfg.work))
        if found and self.step == 0:
            self.load_checkpoint(found[-1])
            log.info("resumed from %s at step %d", found[-1].name, self.step)
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
        full = {k: full_tensor(v, self.world.main) for k, v in self.adapter.state_dict().items()}
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
