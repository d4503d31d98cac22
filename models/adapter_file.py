"""The adapter file: one safetensors file (never pickle) holding the branch, G-CA and micro-condition
weights, the LoRA under ComfyUI's key names, and the AdapterConfig as JSON in the metadata.

Loading is strict: a newer format, a config that does not match the base model, a missing or unexpected
key, a wrong shape or an unreadable file each raise a ValueError that says what differs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .adapter import FORMAT_VERSION, AdapterConfig, PatchVSRAdapter, WeightOf, stored_tensor

META_KEY = "patchvsr"


def save_adapter(adapter: PatchVSRAdapter, path: Path, extra_meta: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {META_KEY: adapter.cfg.to_json(), "format": "patchvsr-adapter"} | (extra_meta or {})
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(adapter.file_state_dict(), str(tmp), metadata=meta)
    tmp.replace(path)  # a crash mid-write never leaves a truncated adapter under the real name
    return path


def _unreadable(name: str, e: Exception) -> ValueError:
    return ValueError(f"adapter '{name}' is not a readable safetensors file ({e}). Re-download or re-export it.")


def read_adapter(path: Path) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    """(config, tensors) of an adapter file, with the format checked but not yet the base model. Every tensor
    in memory at once (tools and tests); load_adapter reads them one at a time."""
    cfg, _ = read_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return cfg, {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise _unreadable(Path(path).name, e) from e


def read_header(path: Path) -> tuple[AdapterConfig, dict[str, tuple[int, ...]]]:
    """(config, shape of every tensor) of an adapter file, with the format checked; no tensor is read."""
    name = Path(path).name
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise _unreadable(name, e) from e
    if META_KEY not in meta:
        raise ValueError(
            f"adapter '{name}' has no PatchVSR config in its metadata: it is not a PatchVSR adapter (a plain LoRA goes in lora_name)."
        )
    try:
        cfg = AdapterConfig.from_json(meta[META_KEY])
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"adapter '{name}' has an unreadable config ({e}).") from e
    if cfg.format_version < FORMAT_VERSION:
        raise ValueError(
            f"adapter '{name}' uses file format {cfg.format_version}, from before this pack gave the global branch "
            f"the text prompt and noised its input in the model's latent space (format {FORMAT_VERSION}); it was "
            "trained for the old inputs. Train it again with this version."
        )
    if cfg.format_version > FORMAT_VERSION:
        raise ValueError(
            f"adapter '{name}' uses file format {cfg.format_version}; this pack reads up to {FORMAT_VERSION}. Update ComfyUI-PatchVSR."
        )
    return cfg, shapes


def check_base(cfg: AdapterConfig, dim: int, layers: int, heads: int, channels: int, name: str) -> None:
    want = {"base_dim": dim, "base_layers": layers, "base_heads": heads, "in_channels": channels}
    diff = [f"{k} {getattr(cfg, k)} (model: {v})" for k, v in want.items() if getattr(cfg, k) != v]
    if diff:
        raise ValueError(
            f"adapter '{name}' was trained for another base model: {', '.join(diff)}. "
            "Use an adapter trained on this Wan model, or connect the model it was trained on."
        )


def check_shapes(adapter: PatchVSRAdapter, shapes: dict[str, tuple[int, ...]], name: str) -> None:
    """The file's keys and shapes must match what the config builds, exactly."""
    want = {k: tuple(v.shape) for k, v in adapter.file_tensors().items()}
    missing = sorted(set(want) - set(shapes))
    unexpected = sorted(set(shapes) - set(want))
    if missing or unexpected:
        raise ValueError(
            f"adapter '{name}' does not match its own config: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}. The file is damaged or from another tool."
        )
    wrong = [f"{k} {shapes[k]} (expected {s})" for k, s in want.items() if shapes[k] != s]
    if wrong:
        raise ValueError(f"adapter '{name}' has {len(wrong)} tensors of the wrong shape, e.g. {wrong[0]}.")


def load_tensors(adapter: PatchVSRAdapter, path: Path, name: str) -> None:
    """Copies the file's tensors into `adapter` (its keys and shapes already checked) one at a time: none is
    held beyond its copy. The file holds float32 weights (2.3 GB for Wan 2.1 1.3B, 24 GB for 14B); the adapter
    keeps them in the compute dtype (docs/real_dims.md)."""
    own = adapter.file_tensors()
    bad = []
    try:
        with torch.no_grad(), safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                value = f.get_tensor(key)
                if value.is_floating_point() and not torch.isfinite(value).all():
                    bad.append(key)
                else:
                    own[key].copy_(value)  # cast to the adapter's dtype, as load_state_dict does
    except (SafetensorError, OSError) as e:
        raise _unreadable(name, e) from e
    if bad:
        raise ValueError(f"adapter '{name}' holds NaN or infinite weights in {bad[:3]}: the training diverged.")


def load_adapter(path: Path, base_blocks, patch_embedding, dims: tuple[int, int, int, int],
                 dtype: torch.dtype = torch.float32, weight_of: WeightOf = stored_tensor) -> PatchVSRAdapter:  # fmt: skip
    """Reads, checks against the base (dim, layers, heads, channels) and builds the adapter, its copied
    blocks in `dtype` (see PatchVSRAdapter)."""
    name = Path(path).name
    cfg, shapes = read_header(path)
    check_base(cfg, *dims, name)
    adapter = PatchVSRAdapter(cfg, base_blocks, patch_embedding, dtype, weight_of)
    check_shapes(adapter, shapes, name)
    load_tensors(adapter, path, name)
    return adapter
