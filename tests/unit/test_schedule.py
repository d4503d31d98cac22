"""The noise schedule from t0 against ComfyUI's real schedulers on Wan's model sampling (flow, shift 8 and 5),
and ComfyUI's real samplers stepping it with a denoiser that knows the clean latent."""

from __future__ import annotations

import types

import pytest
import torch
from harness.inprocess import import_comfy, wan_sampling, wan_schedule

from models.flow import sigmas_from_t0

import_comfy()  # puts the host on sys.path with its --cpu arguments
import comfy.model_sampling  # noqa: E402
import comfy.samplers  # noqa: E402

SHIFTS = (8.0, 5.0)  # Wan 2.1 T2V's default in ComfyUI, and the paper's inference shift
T0S = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.75, 0.9, 0.99, 1.0)


def schedule(scheduler: str, shift: float, n: int) -> torch.Tensor:
    return wan_schedule(scheduler, shift, n)


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("scheduler", comfy.samplers.SCHEDULER_NAMES)
def test_schedule_from_t0_properties(scheduler, shift):
    checked = 0
    for steps in range(1, 51):
        own = schedule(scheduler, shift, steps)
        for t0 in T0S:
            s = sigmas_from_t0(lambda n: schedule(scheduler, shift, n), steps, t0).double()
            where = f"{scheduler} shift {shift}, {steps} steps from t0 {t0}: {s.tolist()}"
            assert len(s) == steps + 1, where
            assert s[0].item() == pytest.approx(t0, abs=1e-7) and s[-1].item() == 0.0, where
            assert bool((s[1:] < s[:-1]).all()), f"not strictly decreasing (repeated or rising sigmas): {where}"
            # The scheduler's own step at level t0, in its own `steps`-step run (t0 above its top: its first).
            # One step has to go from t0 to 0 whatever the scheduler does.
            if steps > 1:
                j = max(int((own >= t0).sum()) - 1, 0)
                own_step = (own[j] - own[j + 1]).item()
                first = (s[0] - s[1]).item()
                assert first <= own_step * (1 + 1e-4) + 1e-6, f"first step {first:.4f} > own {own_step:.4f}: {where}"
            checked += 1
    assert checked == 50 * len(T0S)


@pytest.mark.parametrize("scheduler", comfy.samplers.SCHEDULER_NAMES)
def test_full_range_is_the_schedulers_own_schedule(scheduler):
    for steps in (1, 4, 20, 50):
        own = schedule(scheduler, 8.0, steps)
        # Some schedulers start below the model's top (ddim_uniform with few steps) or repeat levels.
        if own[0].item() == pytest.approx(1.0) and bool((own[1:] < own[:-1]).all()):
            got = sigmas_from_t0(lambda n: schedule(scheduler, 8.0, n), steps, 1.0)
            torch.testing.assert_close(got, own.float())


def test_spacing_follows_the_scheduler_below_t0():
    """The old cut-a-longer-schedule construction gave 0.300 -> 0.198 -> 0.193 (simple, 20 steps): one big step
    then tiny ones. Even spacing along the scheduler's own curve keeps neighbouring steps alike."""
    for scheduler in ("simple", "normal", "beta", "sgm_uniform"):
        s = sigmas_from_t0(lambda n, sch=scheduler: schedule(sch, 8.0, n), 20, 0.3).double()
        d = s[:-1] - s[1:]
        assert (d[1:-1] / d[:-2]).max() < 2.0 and (d[1:-1] / d[:-2]).min() > 0.5, f"{scheduler}: {d.tolist()}"


class Oracle:
    """A 'model' for ComfyUI's samplers that returns the true clean latent at every sigma."""

    def __init__(self, x0: torch.Tensor, shift: float):
        self.x0 = x0
        ms = wan_sampling(shift)
        # Samplers read the model sampling directly or, on newer hosts, through the model patcher.
        patcher = types.SimpleNamespace(model=self, get_model_object=lambda name: {"model_sampling": ms}[name])
        self.inner_model = types.SimpleNamespace(model_sampling=ms, model_patcher=patcher)
        self.cfg = 1.0
        self.model_patcher = patcher

    def __call__(self, x, sigma, **kwargs):
        return self.x0.expand_as(x).clone()


@pytest.mark.parametrize(
    "sampler", ["euler", "heun", "dpmpp_2m", "dpm_2", "uni_pc", "lms", "deis", "res_multistep", "ipndm"]
)
@pytest.mark.parametrize("scheduler", ["simple", "karras", "beta"])
def test_exact_denoiser_returns_the_clean_latent(sampler, scheduler):
    x0 = torch.randn(1, 16, 2, 6, 8, generator=torch.Generator().manual_seed(0))
    for steps, t0 in ((4, 0.3), (20, 0.3), (50, 0.6), (8, 1.0)):
        sigmas = sigmas_from_t0(lambda n: schedule(scheduler, 8.0, n), steps, t0)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
        start = x0 + 0.5 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))  # the upscaled latent
        out = comfy.samplers.sampler_object(sampler).sample(
            Oracle(x0, 8.0), sigmas.clone(), {}, None, noise, latent_image=start, disable_pbar=True
        )
        # ComfyUI's UniPC ends at sigma 1e-3 instead of 0 (in its own KSampler too): that far from exact.
        atol = 2e-2 if sampler.startswith("uni_pc") else 1e-4
        torch.testing.assert_close(out, x0, atol=atol, rtol=0, msg=f"{sampler}/{scheduler} {steps} from {t0}")
