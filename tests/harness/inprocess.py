"""ComfyUI's classes inside the test process (for tests on the real Wan architecture without a server).

ComfyUI reads its command line when comfy.cli_args is first imported, as main.py arranges it; this makes
it see `--cpu` then puts the test runner's argv back.
"""

from __future__ import annotations

import functools
import sys
import types
from contextlib import contextmanager

from .paths import check_in_host_venv, comfy_root


def import_comfy():
    check_in_host_venv()
    root = str(comfy_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    if "comfy.cli_args" not in sys.modules:
        import comfy.options

        comfy.options.enable_args_parsing()
        saved, sys.argv = sys.argv, [sys.argv[0], "--cpu"]
        try:
            import comfy.cli_args  # noqa: F401
        finally:
            sys.argv = saved
    import comfy.ldm.wan.model
    import comfy.model_management
    import comfy.ops

    return comfy


def tiny_wan(dim: int = 128, layers: int = 3, ffn: int = 256, in_dim: int = 16, seed: int = 0):
    """A real-architecture Wan DiT (ComfyUI's WanModel) with fixed-seed random weights, on the CPU."""
    comfy = import_comfy()
    from .tiny_models import _init_

    dm = comfy.ldm.wan.model.WanModel(
        model_type="t2v", dim=dim, ffn_dim=ffn, num_heads=dim // 128, num_layers=layers, in_dim=in_dim,
        out_dim=in_dim, operations=comfy.ops.disable_weight_init,
    )  # fmt: skip
    _init_(dm, seed)
    return dm.eval()


@functools.cache
def wan_sampling(shift: float):
    """The model sampling ComfyUI builds for a Wan T2V model (discrete flow, CONST), at `shift`."""
    import_comfy()
    import comfy.model_sampling

    class WanSampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        pass

    return WanSampling(types.SimpleNamespace(sampling_settings={"shift": shift, "multiplier": 1000}))


@functools.cache
def wan_schedule(scheduler: str, shift: float, n: int):
    """The host's `scheduler` run of n steps on Wan's model sampling at `shift`: [n + 1] float64 sigmas."""
    import_comfy()
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(wan_sampling(shift), scheduler, n).cpu().double()


@contextmanager
def training_mode():
    """The pack's nodes/host.py `training_mode` for in-process training (the pack itself is not importable
    here): ComfyUI 0.33's comfy-kitchen RoPE has no backward unless the host's training flag is set."""
    mm = import_comfy().model_management
    if not hasattr(mm, "in_training"):
        yield
        return
    saved, mm.in_training = mm.in_training, True
    try:
        yield
    finally:
        mm.in_training = saved
