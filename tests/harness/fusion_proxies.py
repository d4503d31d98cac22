"""Seam, colour-drift and flicker proxies for the fusion modes (BRIEF section 7), shared by the unit tests
and the benchmark. Pure PyTorch: no ComfyUI.

Dimension legend: B batch, C channels, T latent frames, H latent rows, W latent columns.

Two stand-in models invent a per-patch tone (a constant offset per channel, seeded by the patch's place):
- `independent`: predicts target + offset whatever the latent holds. Euler's last step returns the last
  prediction, so only the last evaluation's fusion shows.
- `following`: a model that keeps what the latent already holds at low noise: its clean estimate moves from
  the latent's clean part c towards the target by the noise level t, and it invents offset * t. Every step
  leaves its share of tone in the result, so seams left by earlier evaluations show too.
"""

from __future__ import annotations

import functools

import torch
from einops import rearrange

from models.blend import StitchConfig, StitchMode
from models.flow import euler_sample, velocity_from_x0
from models.joint import FusionSchedule, crop, step_index
from models.plan import Kind, PatchPlan, Window

TS = [0.9, 0.7, 0.45, 0.2, 0.05, 0.0]  # flow times of a short Euler run
TONE = 0.5  # size of a patch's invented tone, against a target of amplitude 1


def target_of(shape: tuple[int, int, int], channels: int = 4) -> torch.Tensor:
    """[1, C, T, H, W] smooth HR detail that moves slowly over time."""
    T, H, W = shape
    t, y, x = torch.meshgrid(torch.arange(T * 1.0), torch.arange(H * 1.0), torch.arange(W * 1.0), indexing="ij")
    return (torch.sin(x / 3 + 0.2 * t) * torch.cos(y / 4)).expand(1, channels, T, H, W).clone()


@functools.cache
def tone(patch, channels: int, seed: int = 0) -> torch.Tensor:
    """[1, C, 1, 1, 1] the tone a patch invents, the same every time that patch runs (made once: read-only)."""
    win, box = patch
    seed = 7919 * seed + 100003 * win.t0 + 1000 * box.y0 + 10 * box.x0 + list(Kind).index(box.kind)
    return TONE * torch.randn(1, channels, 1, 1, 1, generator=torch.Generator().manual_seed(seed))


def sample(plan: PatchPlan, stitch: StitchConfig, target, noise, model: str, ts=TS, batch=4, post=None, seed=0):
    """Euler run of a stand-in model (`seed` draws its tones) through the stitch's fusion schedule
    -> [1, C, T, H, W]."""
    schedule = FusionSchedule.build(plan, stitch, batch)
    C = target.shape[1]

    def velocity(zt, t):
        def fn(xs, patches):
            x0 = []
            for i, p in enumerate(patches):  # rows are batch-major ((B k)); B is 1 here
                want = crop(target, *p)
                if model == "independent":
                    x0.append(want + tone(p, C, seed))
                else:
                    c = (xs[i : i + 1] - t * crop(noise, *p)) / (1 - t)
                    x0.append(c + t * (want - c) + t * tone(p, C, seed))
            return velocity_from_x0(xs, rearrange(torch.stack(x0), "k b ... -> (b k) ..."), t)

        jm = schedule.at(step_index(t, ts), len(ts) - 1)
        return jm(zt, fn, post=post(t) if post else None)

    return euler_sample(t_noise(noise, ts[0]), ts, velocity)


def t_noise(noise: torch.Tensor, t: float) -> torch.Tensor:
    """The start latent: pure noise at flow time t over a zero clean part."""
    return t * noise


@functools.cache
def seam_lines(plan: PatchPlan, stitch: StitchConfig | None = None) -> tuple[list[int], list[int]]:
    """Rows and columns (latent borders) where any mode can leave a seam: every border of the plan's boxes
    (base and bridging) and of the shifted stitch's grids (its last step's included). Every mode is scored
    on the same lines."""
    _, H, W = plan.latent_shape
    shifted = stitch or StitchConfig(StitchMode.SHIFTED)
    grids = [jm.plan for jm in FusionSchedule.build(plan, shifted, None).layouts]
    ys = {e for b in plan.boxes for e in (b.y0, b.y1)} | {e for g in grids for e in g.row_edges}
    xs = {e for b in plan.boxes for e in (b.x0, b.x1)} | {e for g in grids for e in g.col_edges}
    return tuple(sorted(e for e in ys if 0 < e < H)), tuple(sorted(e for e in xs if 0 < e < W))


def seam_score(plan: PatchPlan, x: torch.Tensor, lines: tuple[list[int], list[int]] | None = None) -> float:
    """Gradient energy on the seam lines (default seam_lines(plan)) over the energy elsewhere."""
    _, H, W = plan.latent_shape
    ys, xs = lines or seam_lines(plan)
    gx = (x[..., 1:] - x[..., :-1]).pow(2).mean(dim=(0, 1, 2))  # H W-1
    gy = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean(dim=(0, 1, 2))  # H-1 W
    bx, by = torch.zeros(W - 1, dtype=torch.bool), torch.zeros(H - 1, dtype=torch.bool)
    bx[[e - 1 for e in xs]] = True
    by[[e - 1 for e in ys]] = True
    border = torch.cat([gx[:, bx].flatten(), gy[by, :].flatten()]).mean()
    inner = torch.cat([gx[:, ~bx].flatten(), gy[~by, :].flatten()]).mean()
    return (border / inner).item()


def colour_drift(plan: PatchPlan, x: torch.Tensor, target: torch.Tensor) -> float:
    """Spread (std) of the mean error over the base boxes of every window: tone that differs by patch."""
    means = [crop(x - target, w, b).mean() for w in plan.windows for b in plan.base_boxes()]
    return torch.stack(means).std().item()


def flicker(borders: set[int], x: torch.Tensor) -> float:
    """Mean absolute frame-to-frame change into a frame that starts a window (`borders`) over the same
    inside windows: 1 means no temporal seam."""
    T = x.shape[2]
    step = (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=(0, 1, 3, 4))  # T-1: change into frame t + 1
    at = torch.tensor([t + 1 in borders for t in range(T - 1)])
    return (step[at].mean() / step[~at].mean()).item()


def window_borders(schedule: FusionSchedule) -> set[int]:
    """Every frame, other than 0, where a window of any step starts or one ends."""
    T = schedule.plan.latent_shape[0]
    return {e for jm in schedule.layouts for w in jm.plan.windows for e in (w.t0, w.t1) if 0 < e < T}


def token_cost(schedule: FusionSchedule, steps: int) -> float:
    """Mean DiT tokens per step over the frame's own (the base grid run once over the clip, windows without
    overlap), counted here from the patches each step runs: Wan makes a token of 1 x 2 x 2 latent cells,
    a partial token counted whole."""
    plan = schedule.plan

    def tokens(win, box) -> int:
        return win.length * ((box.height + 1) // 2) * ((box.width + 1) // 2)

    whole = Window(0, plan.latent_shape[0])
    frame = sum(tokens(whole, b) for b in plan.base_boxes())
    run = sum(tokens(*p) for i in range(steps) for batch in schedule.at(i, steps).batches for p in batch)
    return run / steps / frame


def evaluations(schedule: FusionSchedule, steps: int) -> float:
    """Mean patch evaluations (DiT rows at cfg 1) per step."""
    return sum(sum(len(b) for b in schedule.at(i, steps).batches) for i in range(steps)) / steps


SEEDS = range(4)  # tone draws averaged over: one draw of a dozen patches' tones is too noisy to rank modes


def measure(
    plan: PatchPlan, stitch: StitchConfig, model: str, borders: set[int] | None = None, ts=TS, lines=None
) -> dict:
    """Seam score (on `lines`, default seam_lines(plan)), colour drift (and flicker at `borders`) of a
    stitch over the Euler run `ts`, each the mean over SEEDS."""
    target = target_of(plan.latent_shape)
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(3))
    outs = [sample(plan, stitch, target, noise, model, ts=ts, seed=s) for s in SEEDS]
    res = {
        "seam": sum(seam_score(plan, x, lines) for x in outs) / len(outs),
        "drift": sum(colour_drift(plan, x, target) for x in outs) / len(outs),
    }
    if borders is not None:
        res["flicker"] = sum(flicker(borders, x) for x in outs) / len(outs)
    return res
