"""Memory that adapts: the sampler's full-size latents in ComfyUI's reservation, patch batches sized to free
memory, and an out-of-memory error that halves the batch instead of losing the run."""

import pytest
import torch

from models.blend import StitchConfig, StitchMode
from models.joint import FusionSchedule
from models.memory import (
    MEMORY_EFFICIENT_ATTENTION,
    BatchSizer,
    host_estimate,
    reserve_shape,
    sampler_bytes,
    sampler_frames,
)
from models.plan import PlanConfig, latent_frames, make_plan

pytestmark = pytest.mark.pure  # the pack's pure-PyTorch core: one host runs it (.ci/test)

GB = 1e9
LATENT_4K = (16, latent_frames(81), 2160 // 8, 3840 // 8)  # Wan 2.1: 16 channels, 1/8 size, 21 frames


def comfy_estimate(shape):
    """ComfyUI's BaseModel.memory_required for Wan 2.1 1.3B in bf16 with flash attention (0.9 factor)."""
    return shape[0] * shape[2] * shape[3] * shape[4] * 2 * 0.01 * (1536 / 2222) * 1024 * 1024


def test_full_size_latents_at_4k():
    # One float32 copy of a 4K, 81-frame latent is 174 MB; the sampler keeps 18 (cfg 1) to 24 (cfg > 1 with
    # the global context) of them, which ComfyUI did not count before.
    assert sampler_bytes(LATENT_4K, 1, False) == pytest.approx(3.13 * GB, rel=0.01)
    assert sampler_bytes(LATENT_4K, 2, True) == pytest.approx(4.18 * GB, rel=0.01)
    # At least what tests/benchmarks/sampler_memory.py measured on the CPU (15.1 and 19.0 copies, euler).
    assert sampler_frames(1, False) >= 15.1 and sampler_frames(2, False) >= 19.0


def test_full_size_latents_grow_linearly_in_frames():
    c, _, h, w = LATENT_4K
    b = [sampler_bytes((c, latent_frames(n), h, w), 2, True) for n in (81, 161, 241)]
    assert b[1] - b[0] == b[2] - b[1] and b[0] / latent_frames(81) == b[2] / latent_frames(241)


@pytest.mark.parametrize("estimate", [comfy_estimate, lambda s: 1e3 * (s[0] * s[2] * s[3] * s[4]) ** 1.5])
@pytest.mark.parametrize("extra", [0.0, 1.0, 3.83 * GB])
def test_reserved_shape_covers_the_patch_batch_and_the_full_size_latents(estimate, extra):
    patch = [4, 16, 21, 60, 104]  # four native 832x480 patches of 81 frames
    shape = reserve_shape(estimate, patch, extra)
    assert shape[:2] == patch[:2] and shape[3:] == patch[3:]
    assert estimate(shape) >= estimate(patch) + extra
    if shape[2] > patch[2]:  # the fewest frames that do
        assert estimate([*shape[:2], shape[2] - 1, *shape[3:]]) < estimate(patch) + extra
    else:
        assert extra == 0.0 or estimate(patch) + extra <= estimate(patch)
    # ComfyUI reserves its estimate of [2 B, ...] (cond and uncond); at least the sum asked for.
    assert estimate([2 * shape[0], *shape[1:]]) >= estimate(patch) + extra


QUADRATIC = 0.15 / (0.01 * 2)  # upstream's conservative over its memory-efficient estimate, bf16


# --- the host's estimate, as its sampler asks it ---------------------------------------------------------
class LegacyModel:
    """A model whose memory_required knows no attention profile (BaseModel on both test hosts)."""

    def memory_required(self, input_shape, cond_shapes={}):
        return comfy_estimate(input_shape)


class ProfiledModel:
    """Upstream's BaseModel.memory_required (read against ComfyUI 0.38's tests of it): per token 0.01 MB per
    byte of the inference dtype for memory-efficient attention, 0.15 MB otherwise (7.5 times as much in bf16)."""

    def memory_required(self, input_shape, cond_shapes={}, memory_efficient_attention=None):
        return comfy_estimate(input_shape) * (1 if memory_efficient_attention else QUADRATIC)


def upstream_helper(calls):
    """A stand-in for upstream's comfy.model_patcher.call_model_memory_required (neither test host has it):
    the model's memory_required with the attention profile, which it omits for a model that knows none (as
    upstream's tests/unit memory tests require); records each call."""

    def call_model_memory_required(model, input_shape, cond_shapes=None, memory_efficient_attention=None):
        calls.append((list(input_shape), cond_shapes, memory_efficient_attention))
        if memory_efficient_attention is None:
            return model.memory_required(input_shape, cond_shapes=cond_shapes or {})
        return model.memory_required(
            input_shape, cond_shapes or {}, memory_efficient_attention=memory_efficient_attention
        )

    return call_model_memory_required


def test_estimate_without_the_hosts_helper_is_the_models_own():
    patch = [2, 16, 21, 60, 104]
    assert host_estimate(LegacyModel(), {})(patch) == comfy_estimate(patch)


@pytest.mark.parametrize("flag", [None, True, False])
def test_estimate_goes_through_the_hosts_helper_with_the_models_attention_profile(flag):
    """Where the host has call_model_memory_required, the reservation asks it as the host's sampler does
    (comfy/sampler_helpers.py estimate_memory), with the model option an attention override sets, so
    PatchVSR's reserved shape is sized by the estimate the host will compute for it."""
    calls, patch = [], [2, 16, 21, 60, 104]
    options = {} if flag is None else {MEMORY_EFFICIENT_ATTENTION: flag}
    model = LegacyModel() if flag is None else ProfiledModel()
    estimate = host_estimate(model, options, upstream_helper(calls))
    want = comfy_estimate(patch) * (QUADRATIC if flag is False else 1)
    assert estimate(patch) == want and calls == [(patch, {}, flag)]
    # The reservation follows the profile: a quadratic-attention estimate needs fewer extra frames.
    extra = 3.83 * GB
    shape = reserve_shape(estimate, patch, extra)
    assert estimate(shape) >= estimate(patch) + extra
    if flag is False:
        efficient = host_estimate(ProfiledModel(), {MEMORY_EFFICIENT_ATTENTION: True}, upstream_helper([]))
        assert shape[2] < reserve_shape(efficient, patch, extra)[2]


# --- batches that adapt ---------------------------------------------------------------------------------
PLAN = make_plan(PlanConfig((3, 40, 60), (8, 12), 21))  # 5 x 5 base grid: 9 interior patches of one size


def oom_model(fail_above: int, times: int = 1, error=None):
    """A position-dependent stand-in DiT that runs out of memory on its first `times` calls of more than
    `fail_above` patches; records every call's patch count (failed ones negative)."""
    calls = []

    def fn(xs, patches):
        if len(patches) > fail_above and sum(c < 0 for c in calls) < times:
            calls.append(-len(patches))
            raise error or torch.OutOfMemoryError("CUDA out of memory (injected)")
        calls.append(len(patches))
        shift = torch.tensor([p[1].y0 + 2 * p[1].x0 + p[0].t0 for p in patches], dtype=xs.dtype)
        shift = shift.repeat(xs.shape[0] // len(patches))  # rows are batch-major: (B k)
        return torch.tanh(xs * (1 + shift.view(-1, 1, 1, 1, 1) / 50))

    return fn, calls


def is_oom(e):
    return isinstance(e, torch.OutOfMemoryError)


@pytest.mark.parametrize("mode", [StitchMode.SHIFTED, StitchMode.WEIGHTED])
def test_out_of_memory_halves_the_batch_and_gives_the_same_result(mode):
    torch.manual_seed(0)
    x = torch.randn(2, 4, *PLAN.latent_shape)
    jm = FusionSchedule.build(PLAN, StitchConfig(mode), None).at(0, 4)
    ref_fn, _ = oom_model(fail_above=10**6)
    ref = jm(x, ref_fn)
    fn, calls = oom_model(fail_above=2)
    halved = []
    sizer = BatchSizer(None, is_oom, on_oom=halved.append)
    out = jm(x, fn, sizer=sizer)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    # The first call of more than 2 patches failed, was retried with half as many, and the run kept that size.
    (i,) = [i for i, c in enumerate(calls) if c < 0]
    assert calls[i + 1] == -calls[i] // 2 and halved == [calls[i + 1]] and sizer.cap == calls[i + 1]
    assert max(calls[i + 1 :]) <= sizer.cap and sum(c for c in calls if c > 0) == jm.num_patches


def test_out_of_memory_halves_again_until_a_call_fits():
    x = torch.randn(1, 4, *PLAN.latent_shape)
    jm = FusionSchedule.build(PLAN, StitchConfig(StitchMode.WEIGHTED), 8).at(0, 1)
    fn, calls = oom_model(fail_above=1, times=2)
    jm(x, fn, sizer=BatchSizer(8, is_oom))
    assert calls[:3] == [-8, -4, 2], calls


def test_a_single_patch_out_of_memory_and_other_errors_are_raised():
    x = torch.randn(1, 4, *PLAN.latent_shape)
    jm = FusionSchedule.build(PLAN, StitchConfig(StitchMode.WEIGHTED), 1).at(0, 1)
    with pytest.raises(torch.OutOfMemoryError):
        jm(x, oom_model(fail_above=0)[0], sizer=BatchSizer(1, is_oom))
    fn, calls = oom_model(fail_above=1, error=RuntimeError("a shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        FusionSchedule.build(PLAN, StitchConfig(StitchMode.WEIGHTED), 4).at(0, 1)(x, fn, sizer=BatchSizer(4, is_oom))
    assert calls == [-4]  # not retried: only running out of memory is


def test_automatic_batch_takes_what_fits():
    x = torch.randn(2, 4, *PLAN.latent_shape)
    jm = FusionSchedule.build(PLAN, StitchConfig(StitchMode.WEIGHTED), None).at(0, 1)
    asked = []

    def fits(rows, thw):
        asked.append((rows, thw))
        return 3

    fn, calls = oom_model(fail_above=10**6)
    jm(x, fn, sizer=BatchSizer(None, is_oom, fits=fits))
    assert max(calls) == 3 and sum(calls) == jm.num_patches
    assert len(asked) == len(jm.batches) and all(rows == 2 for rows, _ in asked)  # asked once per patch shape
    sizer = BatchSizer(None, is_oom, fits=lambda rows, thw: 0)
    calls.clear()
    jm(x, fn, sizer=sizer)
    assert set(calls) == {1}  # nothing fits by the estimate: one patch at a time, never none
