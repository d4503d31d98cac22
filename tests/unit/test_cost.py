"""The partitioner's cost text counts what the sampler runs: per-step patch evaluations equal the patches of
each step's joint modulation (joint.FusionSchedule), for the shipped workflows' 2K and 4K plans."""

import pytest

from models.blend import StitchConfig, StitchMode
from models.cost import DitSize, cost_text, evaluations_per_step, run_totals, total_evaluations
from models.joint import FusionSchedule
from models.plan import Geometry, PlanConfig, make_plan

pytestmark = pytest.mark.pure  # the pack's pure-PyTorch core: one host runs it (.ci/test)

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
    """The counts on the node, against the 4K plan's grid counted by hand: 5 x 5 base patches of at most
    480 x 832 px over 3840 x 2160; bridges across the 5 x 4 vertical and 4 x 5 horizontal seams and on the
    4 x 4 intersections; the last step's grid has one cell more per axis (cells centred on the base borders)."""
    plan = shipped_plan("4K")
    text = cost_text(plan, DitSize(dim=1536, ffn_dim=8960, weight_bytes=2_838_000_000))
    assert "Base grid 5 rows x 5 columns = 25 patches" in text
    assert (
        "56 bridging patches (dashed: 20 red across vertical seams, 20 orange across horizontal seams, 16 magenta"
        in text
    )
    assert "weighted / average 81; naive 25;" in text
    assert ", 36 on the last step" in text
    assert "4 steps: weighted 324," in text and "50 steps: weighted 4050," in text
    assert "1 temporal window(s)" in text
    # 4K, one frame: a 16 x 1 x 270 x 480 float32 latent (7.9 MiB), a 3840 x 2160 x 3 float32 frame; the
    # sampler's full-size latents are models/memory.py's (18 at cfg 1, 23 at cfg != 1, 24 with the context).
    assert "latent 8 MiB each; the sampler keeps 18 of them at cfg 1, 23 at cfg != 1" in text
    assert "(142 MiB to 190 MiB)" in text and "decoded video 95 MiB" in text
    assert "Memory estimate: DiT about" in text


@pytest.mark.parametrize("mode", list(StitchMode))
def test_frontend_totals_are_the_runs(mode):
    """js/patchvsr.js looks the connected sampler's total up in run_totals: each entry is the run's count."""
    plan = shipped_plan("2K")
    totals = run_totals(plan, max_steps=60)[mode.value]
    assert len(totals) == 60
    for steps in (1, 2, 3, 4, 6, 7, 20, 60):
        assert totals[steps - 1] == total_evaluations(plan, StitchConfig(mode), steps, 1.0)


def test_long_clip_counts_every_window():
    plan = shipped_plan("2K", frames=161)  # 41 latent frames: windows of 21
    assert len(plan.windows) == 3
    assert run_totals(plan, max_steps=1)["weighted"] == [len(plan.boxes) * 3]
