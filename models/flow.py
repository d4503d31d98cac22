"""Rectified flow (PatchVSR eq. 1-2): z_t = (1 - t) z_0 + t eps, velocity v = eps - z_0.

Used by the tests, the benchmark and the trainer; in the graph ComfyUI's own samplers drive the steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def noise_to(z0: torch.Tensor, t: float, noise: torch.Tensor) -> torch.Tensor:
    """Forward process: the point at flow time t on the straight path from z0 to noise."""
    return (1.0 - t) * z0 + t * noise


def x0_from_velocity(z_t: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
    """Clean estimate implied by a velocity at flow time t."""
    return z_t - t * v


def velocity_from_x0(z_t: torch.Tensor, x0: torch.Tensor, t: float) -> torch.Tensor:
    """Velocity that points from z_t to the clean estimate x0 (t > 0)."""
    return (z_t - x0) / t


def euler_sample(
    z: torch.Tensor, ts: list[float], velocity: Callable[[torch.Tensor, float], torch.Tensor]
) -> torch.Tensor:
    """Euler steps z_{t_i} = z_{t_j} + v (t_i - t_j) along the decreasing flow times `ts`."""
    for t_cur, t_next in zip(ts, ts[1:]):
        z = z + velocity(z, t_cur) * (t_next - t_cur)
    return z


def sigmas_from_t0(schedule: Callable[[int], torch.Tensor], steps: int, t0: float) -> torch.Tensor:
    """[steps + 1] strictly decreasing noise levels from exactly t0 down to 0, spaced like `schedule` below t0.

    schedule(n) gives a scheduler's n + 1 sigmas from its maximum down to 0 (ComfyUI's calculate_sigmas).
    ComfyUI's `denoise` keeps the last fraction of *steps*, which under Wan's timestep shift starts far above
    the intended level; cutting a longer schedule at t0 instead leaves a large first step and, for schedulers
    that pick from the model's discrete table, repeated sigmas (zero-length steps: NaN in multistep solvers).

    Here the scheduler is read as a curve sigma(u), u in [0, 1] along its steps (a dense run of it), and the
    `steps` levels are spaced evenly in u from the point where the curve crosses t0 to its end: the tail of the
    same scheduler run at the density that puts exactly `steps` steps below t0. At t0 equal to its maximum
    this is the scheduler's own `steps`-step schedule.
    """
    assert steps >= 1 and 0.0 < t0 <= 1.0, f"need steps >= 1 and 0 < t0 <= 1, got {steps}, {t0}"
    own = _strictly_decreasing(schedule(steps).double())
    if abs(t0 - float(own[0])) < 1e-6 and len(own) == steps + 1:  # t0 at the scheduler's top: its own run
        return own.float()
    # 1. The scheduler as a curve: dense knots (u, sigma), equal sigmas merged into one knot at their mean u.
    n = max(1024, 8 * steps)
    dense = schedule(n).double()
    dense = torch.cummin(dense, 0).values  # guards against a non-monotone scheduler; ComfyUI's are monotone
    u = torch.linspace(0.0, 1.0, len(dense), dtype=torch.float64)
    levels, inverse = torch.unique(dense, return_inverse=True)  # ascending
    u_knot = torch.zeros_like(levels).index_add_(0, inverse, u) / torch.bincount(inverse).double()
    levels, u_knot = levels.flip(0), u_knot.flip(0)  # descending sigma, ascending u
    if float(levels[-1]) != 0.0:  # every ComfyUI scheduler ends at 0; be explicit for any other
        levels, u_knot = torch.cat([levels, levels.new_zeros(1)]), torch.cat([u_knot, u_knot.new_ones(1)])
    # 2. Where the curve crosses t0 (above its maximum: at its start), then `steps` even steps in u to the end.
    u0 = _interp(torch.tensor([t0], dtype=torch.float64), levels.flip(0), u_knot.flip(0))[0].clamp(0.0, 1.0)
    us = u0 + (u_knot[-1] - u0) * torch.arange(1, steps + 1, dtype=torch.float64) / steps
    sigmas = torch.cat([torch.tensor([t0], dtype=torch.float64), _interp(us, u_knot, levels)])
    sigmas[-1] = 0.0
    # 3. Never a first step larger than the scheduler's own step at level t0 (its `steps`-step run): with few
    #    steps and t0 near the top, even spacing in u can reach into the steeper part of a shifted schedule.
    #    (Above the scheduler's top, as ddim_uniform with few steps starts lower: its first step.)
    j = max(int((own >= t0).sum()) - 1, 0)
    if j + 1 < len(own) and steps > 1:
        sigmas[1] = max(float(sigmas[1]), t0 - float(own[j] - own[j + 1]))
    out = sigmas.float()
    assert bool((out[1:] < out[:-1]).all()), f"schedule from t0={t0} is not strictly decreasing: {out.tolist()}"
    return out


def _strictly_decreasing(s: torch.Tensor) -> torch.Tensor:
    """Drops repeated levels (a scheduler asked for more steps than its table has)."""
    keep = torch.ones(len(s), dtype=torch.bool)
    keep[1:] = s[1:] < s[:-1]
    return s[keep]


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x; xp strictly increasing; clamps at the ends."""
    i = torch.searchsorted(xp, x.clamp(xp[0], xp[-1]), right=True).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    w = ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return f0 + w * (f1 - f0)
