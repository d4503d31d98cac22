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
    """[steps + 1] noise levels from flow time t0 down to 0, shaped like `schedule` near the end.

    schedule(n) gives a scheduler's n + 1 sigmas from its maximum down to 0. ComfyUI's `denoise` keeps the
    last fraction of *steps*, which under Wan's timestep shift starts far above the intended noise level;
    here the schedule is lengthened until `steps` of its levels lie below t0, and t0 itself is prepended,
    so sampling starts exactly at t0 and keeps the scheduler's spacing where the steps are taken.
    """
    assert steps >= 1 and 0.0 < t0 <= 1.0, f"need steps >= 1 and 0 < t0 <= 1, got {steps}, {t0}"
    full = schedule(steps)
    if t0 >= float(full[0]):
        return full
    n = steps
    while n <= 256 * steps:
        s = schedule(n)
        below = s[s < t0]
        if len(below) >= steps:
            return torch.cat([torch.tensor([t0], dtype=s.dtype), below[-steps:]])
        n = n * 2
    # A scheduler that keeps almost nothing below t0 (possible at tiny t0): space the steps linearly.
    return torch.linspace(t0, 0.0, steps + 1)
