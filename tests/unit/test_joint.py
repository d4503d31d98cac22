"""Multi-patch joint modulation against the paper's claims, as numbers (BRIEF section 7)."""

import random

import pytest
import torch
from einops import rearrange
from harness.fusion_proxies import seam_score

from models.blend import StitchConfig, StitchMode, spatial_weight
from models.context import ContextConfig, anchor_low_frequency, global_lowpass, lowpass_sigma
from models.flow import euler_sample, noise_to, velocity_from_x0, x0_from_velocity
from models.joint import FusionSchedule, JointModulation, crop, patch_rows, patch_timesteps, step_index
from models.plan import Kind, PlanConfig, make_plan

pytestmark = pytest.mark.pure  # the pack's pure-PyTorch core: one host runs it (.ci/test)

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
    other = JointModulation(jm.plan, jm.stitch, tuple(shuffled), jm.weigh)
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
        for name, mode, bw in [("naive", StitchMode.NAIVE, 5.0), ("average", StitchMode.AVERAGE, 5.0),
                               ("weighted", StitchMode.WEIGHTED, 5.0), ("weighted, blend 1", StitchMode.WEIGHTED, 1.0)]
    }  # fmt: skip
    seams = {k: seam_score(plan, v) for k, v in out.items()}
    holes = {k: intersection_contrast(plan, v - target) for k, v in out.items()}
    print("seam score", seams, "intersection contrast", holes)
    assert seams["weighted"] * 1.5 < seams["average"] and seams["average"] * 1.5 < seams["naive"], seams
    # The black hole: plain averaging leaves a spot where four patches meet; blend weight 5.0 removes it,
    # and it is the blend weight that does: the same profiles with blend weight 1 leave more of it.
    assert holes["weighted"] * 2.5 < holes["average"], holes
    assert holes["weighted"] * 1.5 < holes["weighted, blend 1"], holes


def test_raw_weights_follow_the_papers_profiles():
    """The weights before normalisation (supplement Fig. 6): base patches 1 everywhere; a bridging patch
    peaks on the two cells either side of its split line, which is the base seam it bridges (the token grid
    can put that seam a cell off the patch's centre), at 1 less half a cell of its side's slope, and falls
    linearly to nearly nothing at its sides; the intersection patch peaks at the blend weight times that,
    around the intersection. AVERAGE gives every patch 1."""
    plan = make_plan(PlanConfig((1, 40, 56), (16, 16), 1))  # base cells of 13-14: bridges 1 cell off-centre
    rows, cols = plan.row_edges[1:-1], plan.col_edges[1:-1]

    def peak_around(profile, seam):  # the two cells around `seam` hold the largest values
        top = sorted(profile.tolist(), reverse=True)[:2]
        near = sorted([profile[seam - 1].item(), profile[seam].item()], reverse=True)
        return near == top and near[1] > profile.max().item() * 0.85

    off_centre = 0
    for bw in (1.0, 5.0):
        cfg = StitchConfig(StitchMode.WEIGHTED, bw)
        for box in plan.boxes:
            w = spatial_weight(box, cfg, plan)
            h, wd = box.height, box.width
            if box.kind == Kind.BASE:
                assert torch.equal(w, torch.ones(h, wd)), box
                continue
            scale = bw if box.kind == Kind.AUX_X else 1.0
            if box.kind in (Kind.AUX_H, Kind.AUX_X):  # split along x, at a base column border
                (sx,) = [e - box.x0 for e in cols if box.x0 < e < box.x1]
                off_centre += sx * 2 != wd
                profile = w[0] if box.kind == Kind.AUX_H else w.max(0).values
                assert peak_around(profile, sx), (box, profile)
                left, right = profile[sx - 1].item(), profile[sx].item()  # each side's own slope to the seam
                assert left / right == pytest.approx((1 - 0.5 / sx) / (1 - 0.5 / (wd - sx)), rel=1e-5), box
            if box.kind in (Kind.AUX_V, Kind.AUX_X):
                (sy,) = [e - box.y0 for e in rows if box.y0 < e < box.y1]
                profile = w[:, 0] if box.kind == Kind.AUX_V else w.max(1).values
                assert peak_around(profile, sy), (box, profile)
            if box.kind == Kind.AUX_X:
                expected = bw * (1 - 0.5 / max(sy, h - sy)) * (1 - 0.5 / max(sx, wd - sx))
                assert w.max().item() == pytest.approx(expected, rel=1e-5), (box, w.max())
            assert w.min().item() < 0.1 * scale, box  # falls to (nearly) nothing at its sides
        average = StitchConfig(StitchMode.AVERAGE, bw)
        assert all(torch.equal(spatial_weight(b, average, plan), torch.ones(b.height, b.width)) for b in plan.boxes)
    assert off_centre > 0  # the case the seam-centred profile is for did occur


# --- global context: colour drift between patches ---------------------------------------------------------
def test_global_context_lowers_colour_drift():
    """The global view is made as the Global Context node makes it, from the LR clip, here a degraded one:
    the HR target area-downscaled 4x, with sensor noise, then resized to the patch size."""
    plan, target, model = _setup()
    ctx = ContextConfig(strength=0.8)
    gen = torch.Generator().manual_seed(5)
    lr = torch.nn.functional.interpolate(target[:, :, 0], scale_factor=0.25, mode="area")
    lr = lr + 0.05 * torch.randn(lr.shape, generator=gen)
    small = torch.nn.functional.interpolate(lr, size=PATCH, mode="bilinear", antialias=True)[:, :, None]
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


def test_anchored_velocity_moves_the_clean_estimate_by_the_anchor():
    """The anchor works on the clean estimate x0 = x - sigma v (rectified flow): the returned velocity's x0
    is the model's x0 plus strength x (global view - x0's low frequencies); strength 0 returns the model's."""
    from models.context import anchored_velocity, lowpass

    g = torch.Generator().manual_seed(6)
    x0 = torch.randn(2, 4, 1, 16, 16, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    sigmas = torch.tensor([0.4, 0.1])
    s = sigmas.view(-1, 1, 1, 1, 1)
    x = (1 - s) * x0 + s * noise
    v = (x - x0) / s
    glp = lowpass(x0 + torch.randn(2, 4, 1, 1, 1, generator=g), 2.0)  # the global view: other tones
    out = anchored_velocity(v, x, sigmas, glp, 0.5, 2.0)
    moved = x - s * out
    torch.testing.assert_close(moved, x0 + 0.5 * (glp - lowpass(x0, 2.0)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(anchored_velocity(v, x, sigmas, glp, 0.0, 2.0), v, atol=1e-5, rtol=1e-5)
