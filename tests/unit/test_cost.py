"""The partitioner's cost text counts what the sampler runs: per-step patch evaluations equal the patches of
each step's joint modulation (joint.FusionSchedule), for the shipped workflows' 2K and 4K plans."""

import pytest

from models.blend import StitchConfig, StitchMode
from models.cost import DitSize, cost_text, evaluations_per_step, per_step, total_evaluations
from models.joint import FusionSchedule
from models.plan import Geometry, PlanConfig, make_plan

# The shipped workflows on a 1-frame 256x144 clip (the tests' input) with Wan 2.1's 832x480 patches.
PLANS = {"2K": (1440, 2560), "4K": (2160, 3840)}


def shipped_plan(target: str, frames: int = 1):
    h, w = PLANS[target]
    geometry = Geometry("wan2.1", 16, 8, (144, 256), (h, w), (480, 832), frames)
    return make_plan(PlanConfig(((frames - 1) // 4 + 1, h // 8, w // 8), (60, 104), 21), geometry=geometry)


@pytest.mark.parametrize("target", PLANS)
@pytest.mark.parametrize("mode", list(StitchMode))
@pytest.mark.parametrize("steps", [1, 2, 6, 20])
def test_evaluations_per_step_are_the_schedules(target, mode, steps):
    plan = shipped_plan(target)
    stitch = StitchConfig(mode)
    schedule = FusionSchedule.build(plan, stitch, 1)
    expected = [schedule.at(i, steps).num_patches for i in range(steps)]
    assert evaluations_per_step(plan, stitch, steps) == expected
    assert total_evaluations(plan, stitch, steps, 1.0) == sum(expected)
    assert total_evaluations(plan, stitch, steps, 5.0) == 2 * sum(expected)


def test_cost_text_names_the_plan():
    plan = shipped_plan("4K")
    text = cost_text(plan, DitSize(dim=1536, ffn_dim=8960, weight_bytes=2_838_000_000))
    n = per_step(plan)
    assert "Base grid 5 rows x 5 columns = 25 patches" in text
    assert f"{len(plan.aux_boxes())} bridging patches" in text
    assert f"weighted / average {n['weighted']}" in text
    assert f"shifted {n['shifted'][0]} and {n['shifted'][1]} on alternating steps" in text
    assert "1 temporal window(s)" in text
    # 4K, one frame: a 16 x 1 x 270 x 480 float32 latent, a 3840 x 2160 x 3 float32 frame.
    assert "latent 8 MiB each" in text and "decoded video 95 MiB" in text
    assert "Memory estimate: DiT about" in text


def test_long_clip_counts_every_window():
    plan = shipped_plan("2K", frames=161)  # 41 latent frames: windows of 21
    assert len(plan.windows) > 1
    n = per_step(plan)
    assert n["weighted"] == len(plan.boxes) * len(plan.windows)
