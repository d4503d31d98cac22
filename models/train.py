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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from . import adapter_runtime as rt
from .adapter import AdapterConfig, PatchVSRAdapter
from .adapter_file import save_adapter
from .context import location_mask
from .data import Clip, crop_size, degrade, find_clips, read_clip
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
# values (train longer, checkpoint more often). Every other field must match the checkpoint's.
RESUMABLE_FIELDS = {"steps", "val_every", "ckpt_every", "out", "work"}
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
    scale: tuple[float, float] = (1.0, 4.0)  # LR down-scale s ~ U[lo, hi] (paper)
    variants: int = 2  # LR versions (different s) cached per clip
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


@dataclass
class Sample:
    hr: torch.Tensor  # [1, C, T, H, W]
    lr: torch.Tensor  # [1, C, T, H, W] latent of the degraded clip at full size
    glob: torch.Tensor  # [1, C, T, gh, gw] latent of the degraded clip resized to the crop size
    scale: float
    caption: str


def cache_latents(cfg: TrainConfig, clips: list[Clip], encode: EncodeFn, on_clip=None, check=None) -> list[Path]:
    """Encodes every clip's HR, LR variants and global view once; later runs reuse the files. A clip that
    cannot be read is skipped with one line; only a folder with no readable clip fails."""
    cache = Path(cfg.work) / "latents"
    cache.mkdir(parents=True, exist_ok=True)
    gen = random.Random(cfg.seed)
    paths, skipped = [], []
    for i, clip in enumerate(clips):
        if check:  # a cancel between clips: the finished ones are on disk (written atomically) and reused
            check()
        # Drawn before the clip is read so one unreadable clip does not change the others' LR scales.
        scales = [gen.uniform(*cfg.scale) for _ in range(cfg.variants)]
        # A stable digest (not hash(), which changes per process) so a restarted run finds its cache.
        # Everything the cached tensors depend on: a changed --scale must not reuse LR made at the old one.
        ident = (
            f"{clip.path.resolve()}|{clip.path.stat().st_mtime_ns}|{cfg.max_frames}|{cfg.crop_px}|{cfg.seed}"
            f"|{cfg.scale}|{cfg.variants}"
        )
        key = f"{clip.path.stem}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}"
        variants = [cache / f"{key}-v{v}{LATENT_SUFFIX}" for v in range(len(scales))]
        if not all(p.exists() for p in variants):
            try:
                hr = read_clip(clip, cfg.max_frames)
            except (OSError, RuntimeError, ValueError) as e:  # ffmpeg/PIL failures, no frames
                log.warning("skipped '%s': %s", clip.path.name, _short_reason(e))
                skipped.append(clip)
                if on_clip:
                    on_clip(i + 1, len(clips))
                continue
            for path, s in zip(variants, scales):
                if not path.exists():
                    lr = degrade(hr, s)
                    tensors = {"hr": encode(hr), "lr": encode(lr), "glob": encode(resize_frames(lr, cfg.crop_px))}
                    tensors = {k: t.float().contiguous().cpu() for k, t in tensors.items()}
                    _save_atomic(tensors, path, {"scale": str(s), "caption": clip.caption})
        paths += variants
        if on_clip:
            on_clip(i + 1, len(clips))
    if skipped and len(skipped) == len(clips):
        raise ValueError(
            f"data: none of the {len(clips)} clips in '{cfg.data}' could be read (see the lines above). "
            "Give a folder of videos ffmpeg can decode, or images."
        )
    if skipped:
        log.warning("skipped %d of %d clips that could not be read; training on %d", len(skipped), len(clips),
                    len(clips) - len(skipped))  # fmt: skip
    return paths


def load_sample(path: Path) -> Sample:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    t = load_file(str(path))
    return Sample(t["hr"], t["lr"], t["glob"], float(meta["scale"]), meta.get("caption", ""))


def run_identity(cfg: TrainConfig, dm, clips: Sequence[str] = ()) -> dict[str, str]:
    """What a checkpoint must match to be resumed: every setting that changes the weights, the data folder
    and its clips, and the base model (its dims and a fingerprint of its weights)."""
    ident = {k: json.dumps(v) for k, v in asdict(cfg).items() if k not in RESUMABLE_FIELDS}
    ident["data"] = json.dumps(str(Path(cfg.data).resolve()))
    # The patch embedding and a slice of every block weight: a fine-tune or another format of the base
    # changes them, and hashing slices keeps this cheap on a 14B model.
    parts = [dm.patch_embedding.weight.flatten()] + [p.flatten()[:64] for b in dm.blocks for p in b.parameters()]
    digest = hashlib.sha1()
    for t in parts:
        digest.update(t.detach().float().cpu().numpy().tobytes())
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


class Trainer:
    """Holds the base DiT (frozen), the adapter (trainable), the optimiser and the RNG; `run()` trains
    to cfg.steps, resuming from the latest checkpoint in cfg.work if there is one."""

    def __init__(self, cfg: TrainConfig, dm, text: TextFn, device="cpu", adapter_cfg: AdapterConfig | None = None,
                 clips: Sequence[str] = ()):  # fmt: skip
        self.cfg, self.dm, self.text, self.device = cfg, dm, text, torch.device(device)
        self.identity = run_identity(cfg, dm, clips)
        dm.requires_grad_(False)
        self.adapter_cfg = adapter_cfg or AdapterConfig.for_base(
            dm.dim, dm.num_layers, dm.num_heads, dm.in_dim, patch_k=cfg.patch_blocks or None,
            global_k=cfg.global_blocks or None, lora_rank=cfg.lora_rank, lora_alpha=float(cfg.lora_rank),
            patch_noise_t=sum(cfg.cond_noise) / 2,  # inference uses the middle of the trained range
        )  # fmt: skip
        torch.manual_seed(cfg.seed)  # adapter init (LoRA down matrices) is part of the run's identity
        self.adapter = PatchVSRAdapter(self.adapter_cfg, dm.blocks, dm.patch_embedding).to(self.device).train()
        # Branch blocks start as copies of frozen base blocks but are trained (paper: branches are trained).
        self.adapter.requires_grad_(True)
        for lora in self.adapter.lora.values():
            lora.alpha.requires_grad_(False)
        self.params = [p for p in self.adapter.parameters() if p.requires_grad]
        # LoRA on the frozen base through forward hooks: the caller gives a DiT the trainer may hook
        # (the ComfyUI node passes a copy, never the artist's model).
        self.hooks = rt.add_lora_hooks(self.adapter, dm.blocks)
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.saved_step = -1  # the step of the last checkpoint written or loaded
        self.history: list[dict] = []
        self.amp = torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else None

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
        context = self.text(caption).to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            # The global branch reads the base's prompt (null 10% of the time, for both: paper, Text Prompts).
            call = rt.compute_call(self.dm, self.adapter, cond, micro, g, mask, context)
            v = rt.forward(self.dm, self.adapter, z_t, t, context, call, checkpoint=self.cfg.grad_checkpointing)
        return F.mse_loss(v.float(), v_target.float())

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _ckpt_dir(self) -> Path:
        return Path(self.cfg.work) / "checkpoints"

    def save_checkpoint(self) -> Path:
        """Adapter weights, AdamW moments, step, loss history and the RNG state: enough to resume exactly."""
        tensors = {f"adapter.{k}": v.detach().cpu().contiguous() for k, v in self.adapter.state_dict().items()}
        names = {id(p): n for n, p in self.adapter.named_parameters()}
        for p in self.params:
            st = self.opt.state.get(p, {})
            for k in ("exp_avg", "exp_avg_sq", "step"):
                if k in st:
                    tensors[f"opt.{names[id(p)]}.{k}"] = torch.as_tensor(st[k]).detach().cpu().contiguous()
        tensors["rng"] = self.gen.get_state()
        meta = {
            "step": str(self.step),
            "history": json.dumps(self.history),
            "config": json.dumps(asdict(self.cfg), default=str),
            "identity": json.dumps(self.identity),
        }
        path = self._ckpt_dir() / f"step_{self.step:07d}{CKPT_SUFFIX}"
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_atomic(tensors, path, meta)
        self.saved_step = self.step
        for old in checkpoints(Path(self.cfg.work))[:-KEEP_CHECKPOINTS]:
            old.unlink()
        return path

    def load_checkpoint(self, path: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        # Checked before any tensor is loaded: another rank would otherwise fail as a raw size mismatch,
        # another data folder or seed would silently continue the wrong run.
        diff = identity_diff(json.loads(meta.get("identity", "{}")), self.identity)
        if diff:
            raise ValueError(mismatch_message(Path(path), diff))
        t = load_file(str(path))
        self.adapter.load_state_dict({k[len("adapter.") :]: v for k, v in t.items() if k.startswith("adapter.")})
        for name, p in self.adapter.named_parameters():
            if f"opt.{name}.exp_avg" in t:
                self.opt.state[p] = {k: t[f"opt.{name}.{k}"].clone() for k in ("step", "exp_avg", "exp_avg_sq")}
        self.gen.set_state(t["rng"])
        self.step = self.saved_step = int(meta["step"])
        self.history = json.loads(meta["history"])

    def latest_checkpoint(self) -> Path | None:
        found = checkpoints(Path(self.cfg.work))
        return found[-1] if found else None

    # -- the loop -----------------------------------------------------------------------------------------
    def validation_loss(self, samples: list[Sample]) -> float:
        gen = torch.Generator().manual_seed((10_000 + self.cfg.seed) % 2**64)  # same crops and noise each time
        with torch.no_grad():
            losses = [self.loss(s, gen).item() for s in samples for _ in range(4)]
        return sum(losses) / len(losses)

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
            if check:
                try:
                    check()
                except BaseException:
                    # A cancel arrives here, between steps, where the state is whole: keep the work done
                    # since the last checkpoint so the next run resumes from this step, bit-exactly.
                    if self.step > max(self.saved_step, 0):
                        log.info("interrupted: checkpoint %s", self.save_checkpoint().name)
                    raise
            sample = train[int(torch.randint(0, len(train), (), generator=self.gen))]
            loss = self.loss(sample, self.gen)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            self.opt.step()
            self.step += 1
            entry = {"step": self.step, "loss": loss.item()}
            if val and (self.step % self.cfg.val_every == 0 or self.step == self.cfg.steps):
                entry["val"] = self.validation_loss(val)
            self.history.append(entry)
            if on_step:
                on_step(self.step, entry)
            if self.step % self.cfg.ckpt_every == 0 or self.step == self.cfg.steps:
                self.save_checkpoint()
        return self.history

    def export(self) -> Path:
        return save_adapter(self.adapter, Path(self.cfg.out), {"train_steps": str(self.step)})

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
) -> tuple[Path, list[dict]]:
    """The whole job: find clips, check the run folder (prepare_run), cache latents, split, train (resuming
    if possible), export. overwrite: an existing adapter may be replaced and a checkpoint with other
    settings is deleted; restart: every checkpoint is deleted."""
    # 1. Everything that can refuse the run, before the hours of caching and training
    data = Path(cfg.data)
    clips = find_clips(data)
    names = [c.path.relative_to(data).as_posix() for c in clips]
    prepare_run(cfg, run_identity(cfg, dm, names), overwrite, restart)
    # 2. Latents (unreadable clips skipped), split
    paths = cache_latents(cfg, clips, encode, on_clip, check)
    train_paths, val_paths = split(paths, cfg.val_fraction, cfg.seed)
    # 3. Train, resuming from the run folder's latest checkpoint
    trainer = Trainer(cfg, dm, text, device, clips=names)
    try:
        history = trainer.run(
            [load_sample(p) for p in train_paths], [load_sample(p) for p in val_paths], on_step, check
        )
        # 4. The adapter, written under a temporary name and renamed (save_adapter)
        return trainer.export(), history
    finally:
        trainer.close()
