"""Builds tiny real-architecture Wan models from ComfyUI's own classes, with fixed-seed random weights, and
saves them as safetensors that the stock UNETLoader and VAELoader auto-detect.

Run in the host interpreter (it imports ComfyUI):  python -m harness.tiny_models OUT_DIR
Writes OUT_DIR/diffusion_models/<name>.safetensors and OUT_DIR/vae/<name>.safetensors.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

# Bump when the recipe changes, so cached files are rebuilt.
RECIPE_VERSION = 11


@dataclass(frozen=True)
class TinyWan:
    name: str
    dim: int = 128  # ComfyUI detects num_heads = dim // 128, so dim is a multiple of 128
    ffn_dim: int = 256
    num_layers: int = 2
    in_dim: int = 16  # latent channels: 16 for Wan 2.1, 48 for Wan 2.2 TI2V-5B; 36 for Wan 2.1 I2V
    model_type: str = "t2v"
    seed: int = 0


@dataclass(frozen=True)
class TinyVae:
    name: str
    dim: int = 8  # read back by the loader from decoder.head.0.gamma
    seed: int = 1


DIT = TinyWan("patchvsr-tiny-wan21-t2v")
# An image-to-video Wan: the wrong family for PatchVSR, so the tests can check the error it gets.
DIT_I2V = TinyWan("patchvsr-tiny-wan21-i2v", in_dim=36, model_type="i2v", seed=2)
# Wan 2.2 TI2V-5B's layout: 48 latent channels in and out (ComfyUI detects it as WAN22 by out_dim 48).
DIT_22 = TinyWan("patchvsr-tiny-wan22-ti2v5b", in_dim=48, seed=4)
VAE = TinyVae("patchvsr-tiny-wan21-vae")
# The weight formats artists load, each a copy of DIT's weights (same seed) saved the way that format is
# shipped; the tests compare each one's output with DIT's float32 output.
FORMATS = ("fp16", "bf16", "fp8_e4m3fn", "fp8_scaled")
LORA_NAME = "patchvsr-tiny-wan21-lora"  # rank 4 on every block's self-attention q and o, in ComfyUI's key naming
# In the layout of the step-distillation LoRAs artists use for few-step sampling (lightx2v's Wan 2.1
# distill LoRAs): low-rank pairs on every linear of every block, full bias offsets (`diff_b`) and full
# offsets of the q/k RMSNorm weights (`diff`).
DISTILL_LORA_NAME = "patchvsr-tiny-wan21-distill-lora"


# PatchVSR adapters for the tiny DiT with small random outputs (as if trained), and one made for a 3-block
# base so the loader's mismatch error can be checked.
ADAPTERS = {"a": "patchvsr-tiny-adapter-a", "b": "patchvsr-tiny-adapter-b", "other": "patchvsr-tiny-adapter-3blocks"}


def tiny_adapter(dm, seed: int):
    import torch

    from models.adapter import AdapterConfig, PatchVSRAdapter

    cfg = AdapterConfig.for_base(
        dm.dim, dm.num_layers, dm.num_heads, dm.in_dim, patch_k=1, global_k=2, lora_rank=4, lora_alpha=4.0
    )
    adapter = PatchVSRAdapter(cfg, dm.blocks, dm.patch_embedding)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():  # wake the zero-initialised outputs up a little
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return adapter


def tiny_lora(dim: int, layers: int, rank: int = 4, seed: int = 3) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(layers):
        for name in ("self_attn.q", "self_attn.o"):
            key = f"diffusion_model.blocks.{i}.{name}"
            sd[f"{key}.lora_down.weight"] = torch.randn(rank, dim, generator=gen) / dim**0.5
            sd[f"{key}.lora_up.weight"] = torch.randn(dim, rank, generator=gen)
            sd[f"{key}.alpha"] = torch.tensor(float(rank))
    return sd


def format_name(fmt: str) -> str:
    return f"{DIT.name}-{fmt}"


def in_format(sd: dict, fmt: str) -> dict:
    """DIT's float32 state dict as a checkpoint of format `fmt`.

    fp8_e4m3fn: every linear weight in fp8 and the rest (norms, biases, modulation, the patch embedding) in
    fp16, as the repackaged Wan fp8 files hold them. fp8_scaled: ComfyUI's legacy scaled-fp8 format, which
    both hosts recognise by its `scaled_fp8` marker key (the pinned host loads it with scaled-fp8 ops, 0.33
    converts it to its quantized tensors in comfy/utils.py convert_old_quants): each linear weight divided
    by a per-tensor `scale_weight` (absmax / 448, the e4m3fn maximum) before the cast to fp8."""
    import torch

    if fmt in ("fp16", "bf16"):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[fmt]
        return {k: v.to(dtype) for k, v in sd.items()}
    out = {}
    for k, v in sd.items():
        if not (k.endswith(".weight") and v.ndim == 2):
            out[k] = v.to(torch.float16)
        elif fmt == "fp8_e4m3fn":
            out[k] = v.to(torch.float8_e4m3fn)
        else:
            scale = v.abs().max().float() / torch.finfo(torch.float8_e4m3fn).max
            out[k] = (v / scale).to(torch.float8_e4m3fn)
            out[k.removesuffix(".weight") + ".scale_weight"] = scale.reshape(())
    if fmt == "fp8_scaled":
        # Empty, as ComfyUI itself writes the marker (model_base.state_dict_for_saving); its dtype is the
        # weights' fp8 dtype.
        out["scaled_fp8"] = torch.tensor([], dtype=torch.float8_e4m3fn)
    return out


def tiny_distill_lora(dim: int, ffn_dim: int, layers: int, rank: int = 4, seed: int = 5) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    linears = {f"{a}.{p}": (dim, dim) for a in ("self_attn", "cross_attn") for p in "qkvo"}
    linears |= {"ffn.0": (dim, ffn_dim), "ffn.2": (ffn_dim, dim)}  # name -> (in, out)
    sd = {}
    for i in range(layers):
        key = f"diffusion_model.blocks.{i}"
        for name, (d_in, d_out) in linears.items():
            sd[f"{key}.{name}.lora_down.weight"] = torch.randn(rank, d_in, generator=gen) / d_in**0.5
            sd[f"{key}.{name}.lora_up.weight"] = torch.randn(d_out, rank, generator=gen) * 0.5
            sd[f"{key}.{name}.alpha"] = torch.tensor(float(rank))
            sd[f"{key}.{name}.diff_b"] = torch.randn(d_out, generator=gen) * 0.05
        for name in ("self_attn.norm_q", "self_attn.norm_k", "cross_attn.norm_q", "cross_attn.norm_k"):
            sd[f"{key}.{name}.diff"] = torch.randn(dim, generator=gen) * 0.05
    return {k: v.to(torch.bfloat16) for k, v in sd.items()}  # shipped in bf16


def files(out_dir: Path) -> dict[str, Path]:
    return {
        "dit": out_dir / "diffusion_models" / f"{DIT.name}.safetensors",
        "dit_i2v": out_dir / "diffusion_models" / f"{DIT_I2V.name}.safetensors",
        "dit_22": out_dir / "diffusion_models" / f"{DIT_22.name}.safetensors",
        **{f"dit_{f}": out_dir / "diffusion_models" / f"{format_name(f)}.safetensors" for f in FORMATS},
        "vae": out_dir / "vae" / f"{VAE.name}.safetensors",
        "lora": out_dir / "loras" / f"{LORA_NAME}.safetensors",
        "distill_lora": out_dir / "loras" / f"{DISTILL_LORA_NAME}.safetensors",
        **{f"adapter_{k}": out_dir / "patchvsr" / f"{name}.safetensors" for k, name in ADAPTERS.items()},
    }


def _init_(module, seed: int) -> None:
    """Deterministic init of every parameter. ComfyUI's ops skip torch's default init (weights stay
    uninitialised memory), so the tiny models set every tensor themselves."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                p.zero_()
            elif leaf == "modulation":  # Wan draws these as randn / sqrt(dim)
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
            elif p.ndim == 1 or leaf == "gamma":
                p.fill_(1.0)  # norm scales (the Wan VAE's RMS_norm gamma has shape [C, 1, 1(, 1)])
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)


def build(out_dir: Path) -> dict[str, Path]:
    import comfy.ldm.wan.model
    import comfy.ldm.wan.vae
    import comfy.ops
    import torch
    from safetensors.torch import save_file

    paths = files(out_dir)
    meta = {"recipe": str(RECIPE_VERSION)}

    def wan(cfg: TinyWan):
        dit = comfy.ldm.wan.model.WanModel(
            model_type=cfg.model_type,
            dim=cfg.dim,
            ffn_dim=cfg.ffn_dim,
            num_heads=cfg.dim // 128,
            num_layers=cfg.num_layers,
            in_dim=cfg.in_dim,
            out_dim=cfg.in_dim if cfg.model_type == "t2v" else 16,
            operations=comfy.ops.disable_weight_init,
        )
        _init_(dit, cfg.seed)
        return dit

    vae = comfy.ldm.wan.vae.WanVAE(
        dim=VAE.dim,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
    )
    _init_(vae, VAE.seed)
    for key, module, cfg in (
        ("dit", wan(DIT), DIT),
        ("dit_i2v", wan(DIT_I2V), DIT_I2V),
        ("dit_22", wan(DIT_22), DIT_22),
        ("vae", vae, VAE),
    ):
        sd = {k: v.detach().to(torch.float32).contiguous() for k, v in module.state_dict().items()}
        paths[key].parent.mkdir(parents=True, exist_ok=True)
        save_file(sd, str(paths[key]), metadata=meta | {k: str(v) for k, v in asdict(cfg).items()})
        if cfg == DIT:
            for fmt in FORMATS:
                fsd = {k: v.contiguous() for k, v in in_format(sd, fmt).items()}
                save_file(fsd, str(paths[f"dit_{fmt}"]), metadata=meta | {"format": fmt})
    from models.adapter_file import save_adapter

    base = wan(DIT)
    save_adapter(tiny_adapter(base, 10), paths["adapter_a"], meta)
    save_adapter(tiny_adapter(base, 11), paths["adapter_b"], meta)
    save_adapter(tiny_adapter(wan(TinyWan("three", num_layers=3)), 12), paths["adapter_other"], meta)
    paths["lora"].parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_lora(DIT.dim, DIT.num_layers), str(paths["lora"]), metadata=meta)
    save_file(tiny_distill_lora(DIT.dim, DIT.ffn_dim, DIT.num_layers), str(paths["distill_lora"]), metadata=meta)
    return paths


def ensure(out_dir: Path) -> dict[str, Path]:
    """Builds the models unless files of this recipe are already there."""
    from safetensors import SafetensorError, safe_open

    paths = files(out_dir)
    try:
        if all(safe_open(str(p), "pt").metadata().get("recipe") == str(RECIPE_VERSION) for p in paths.values()):
            return paths
    except (OSError, RuntimeError, SafetensorError):  # missing or unreadable: rebuild
        pass
    return build(out_dir)


def ensure_in_subprocess(out_dir: Path) -> Path:
    """Runs `ensure` in the host interpreter, keeping ComfyUI's global state out of the caller."""
    import subprocess

    from harness.paths import REPO, host_python

    subprocess.run(
        [host_python(), "-m", "harness.tiny_models", str(out_dir)], cwd=REPO / "tests", check=True, capture_output=True
    )
    return out_dir


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    from harness.paths import REPO, check_in_host_venv, comfy_root

    check_in_host_venv()
    sys.path.insert(0, str(REPO))  # the pack's pure-PyTorch `models` package, for the adapter files
    root = str(comfy_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    # ComfyUI reads its command line when comfy.cli_args is first imported, as main.py arranges it.
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0], "--cpu"]
    for key, path in ensure(args.out_dir).items():
        print(f"{key}: {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
