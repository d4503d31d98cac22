"""Multi-patch joint modulation against the paper's claims, as numbers (BRIEF section 7)."""

import random

import pytest
import torch
from einops import rearrange
from harness.fusion_proxies import seam_score

from models.blend import StitchConfig, StitchMode, weight_maps
from models.context import ContextConfig, anchor_low_frequency, global_lowpass, lowpass_sigma
from models.flow import euler_sample, noise_to, velocity_from_x0, x0_from_velocity
from models.joint import FusionSchedule, JointModulation, crop, patch_rows, patch_timesteps, step_index
from models.plan import PlanConfig, make_plan

TS = [0.9, 0.7, 0.45, 0.2, 0.05, 0.0]


def sample(plan, stitch, x0_of_patch, z, batch=3, post=None):
    """Euler sampling where the 'model' predicts each patch's clean latent with x0_of_patch(patch)."""
    schedule = FusionSchedule.build(plan, stitch, batch)

    def velocity(zt, t):
        def fn(xs, patches):
            # The patch batch is batch-major ((B k) rows), as ComfyUI's cond/uncond chunks need.
            x0 = rearrange(torch.stack([x0_of_patch(p) for p in patches]), "k b ... -> (b k) ...")
            return velocity_from_x0(xs, x0, t)

        jm = schedule.at(step_index(t, TS), len(TS) - 1)  # SHIFTED changes grids between steps
        return jm(zt, fn, post=post(t) if post else None)

    return euler_sample(z, TS, velocity)


@pytest.mark.parametrize("mode", list(StitchMode))
@pytest.mark.parametrize(
    "shape,patch,window",
    [((3, 20, 30), (8, 12), 21), ((7, 17, 23), (6, 10), 3), ((9, 16, 16), (16, 16), 4), ((2, 33, 45), (16, 16), 21)],
)  # fmt: skip
def test_oracle_reproduces_target(mode, shape, patch, window):
    """An oracle that knows the HR target: any grid, uneven size or window gives the target back."""
    torch.manual_seed(0)
    plan = make_plan(PlanConfig(shape, patch, window))
    target = torch.randn(2, 4, *shape)
    z = noise_to(torch.zeros_like(target), TS[0], torch.randn_like(target))
    out = sample(plan, StitchConfig(mode), lambda p: crop(target, *p), z)
    torch.testing.assert_close(out, target, atol=1e-5, rtol=1e-5)


def test_result_does_not_depend_on_patch_order():
    torch.manual_seed(1)
    plan = make_plan(PlanConfig((2, 24, 40), (8, 16), 21))
    x = torch.randn(1, 4, 2, 24, 40)
    jm = JointModulation.build(plan, StitchConfig(), 2)

    def fn(xs, patches):  # a position-dependent nonlinearity, so patches disagree on overlaps
        return torch.tanh(
            xs
            * (
                1
                + torch.tensor([p[1].y0 + 2 * p[1].x0 for p in patches]).repeat_interleave(1).view(-1, 1, 1, 1, 1) / 50
            )
        )

    ref = jm(x, fn)
    shuffled = list(jm.batches)
    random.Random(0).shuffle(shuffled)
    other = JointModulation(jm.plan, jm.stitch, tuple(shuffled), jm.weights)
    torch.testing.assert_close(other(x, fn), ref, atol=1e-6, rtol=1e-6)


# --- seams and black holes: a model whose output depends on which patch it sees ---------------------------
SHAPE, PATCH = (1, 48, 64), (16, 16)


def _setup():
    plan = make_plan(PlanConfig(SHAPE, PATCH, 1))
    y, x = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")
    target = (torch.sin(x / 3) * torch.cos(y / 4)).expand(1, 4, *SHAPE).clone()  # the HR detail, shared

    def hallucinating(p):  # the target plus a per-patch offset: every patch 'invents' its own tone
        g = torch.Generator().manual_seed(1000 * p[1].y0 + 10 * p[1].x0 + list(type(p[1].kind)).index(p[1].kind))
        return crop(target, *p) + 0.5 * torch.randn(1, 4, 1, 1, 1, generator=g)

    return plan, target, hallucinating


def intersection_contrast(plan, err):
    """Variance of the error over the 2x2 cells around each four-patch intersection ('black holes')."""
    v = [
        err[..., y - 1 : y + 1, x - 1 : x + 1].flatten(-2).var(-1).mean()
        for y in plan.row_edges[1:-1]
        for x in plan.col_edges[1:-1]
    ]
    return torch.stack(v).mean().item()


def test_weighted_modulation_removes_seams_and_black_holes():
    plan, target, model = _setup()
    z = torch.randn(1, 4, *SHAPE, generator=torch.Generator().manual_seed(3))
    out = {
        name: sample(plan, StitchConfig(mode, bw), model, z)
        for name, mode, bw in [("naive", StitchMode.NAIVE, 5.0), ("average", StitchMode.AVERAGE, 5.0), ("weighted", StitchMode.WEIGHTED, 5.0)]
    }  # fmt: skip
    seams = {k: seam_score(plan, v) for k, v in out.items()}
    holes = {k: intersection_contrast(plan, v - target) for k, v in out.items()}
    print("seam score", seams, "intersection contrast", holes)
    assert seams["weighted"] * 1.5 < seams["average"] and seams["average"] * 1.5 < seams["naive"], seams
    # The black hole: plain averaging leaves a spot where four patches meet; blend weight 5.0 removes it.
    assert holes["weighted"] * 2.5 < holes["average"], holes


def test_weight_maps_sum_to_one():
    plan = make_plan(PlanConfig((1, 40, 56), (16, 16), 1))
    for mode in StitchMode:
        shares = weight_maps(plan, StitchConfig(mode))
        torch.testing.assert_close(shares.sum(0), torch.ones(40, 56))


# --- global context: colour drift between patches ---------------------------------------------------------
def test_global_context_lowers_colour_drift():
    plan, target, model = _setup()
    ctx = ContextConfig(strength=0.8)
    # The global view: the whole target seen at patch size (what the Global Context node encodes).
    small = torch.nn.functional.interpolate(target[:, :, 0], size=PATCH, mode="area")[:, :, None]
    sigma = lowpass_sigma(plan, ctx, PATCH)
    glp = global_lowpass(small, plan, sigma)

    def post(t):
        def anchor(v, x, p):
            x0 = anchor_low_frequency(x0_from_velocity(x, v, t), crop(glp, *p), ctx.strength, sigma)
            return velocity_from_x0(x, x0, t) if t > 0 else v

        return anchor

    z = torch.randn(1, 4, *SHAPE, generator=torch.Generator().manual_seed(4))
    stitch = StitchConfig(StitchMode.NAIVE)  # drift is a per-patch property: look at it without blending

    def drift(x):
        return (
            torch.stack([(crop(x - target, *p)).mean() for p in [(plan.windows[0], b) for b in plan.base_boxes()]])
            .std()
            .item()
        )

    off = drift(sample(plan, stitch, model, z))
    on = drift(sample(plan, stitch, model, z, post=post))
    print(f"colour drift between patches: off {off:.4f} on {on:.4f}")
    assert on < 0.5 * off


def test_model_inputs_follow_the_patch_batch_layout():
    """Per-row inputs repeat per patch, latent-grid inputs are cropped, per-frame timesteps cut by window,
    all in the batch-major row order the latent crops use; per-token timesteps are refused."""
    plan = make_plan(PlanConfig((5, 8, 12), (4, 6), 3))
    jm = JointModulation.build(plan, StitchConfig(), 64)
    patches = max(jm.batches, key=len)
    k, B = len(patches), 2
    x = torch.randn(B, 3, 5, 8, 12)
    rows = rearrange(torch.stack([crop(x, *p) for p in patches]), "k b ... -> (b k) ...")
    torch.testing.assert_close(patch_rows(x, patches, B, (5, 8, 12)), rows)
    per_row = torch.tensor([1.0, 2.0])
    assert patch_rows(per_row, patches, B, (5, 8, 12)).tolist() == [1.0] * k + [2.0] * k
    assert patch_rows("opt", patches, B, (5, 8, 12)) == "opt"
    t = torch.arange(B * 5, dtype=torch.float32).reshape(B, 5)
    got = patch_timesteps(t, patches, 5)
    assert got.shape[0] == B * k and got[k].tolist() == t[1, patches[0][0].t0 : patches[0][0].t1].tolist()
    assert patch_timesteps(per_row, patches, 5).tolist() == [1.0] * k + [2.0] * k
    with pytest.raises(ValueError, match="per token"):
        patch_timesteps(torch.zeros(B, 5 * 4 * 6), patches, 5)
