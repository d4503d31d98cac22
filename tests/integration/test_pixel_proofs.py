"""Pixel-space proofs (issue 11) on the tiny models trained here (harness/trained.py): a held-out clip,
downscaled 2x and upscaled back by the shipped 2K workflow through the real server, once per stitch mode
and once without the global context, all in one prompt. The decoded frames are measured against the HR
clip (harness/pixel_eval.py). The latent-space proofs (test_joint, test_adapter_proof) stay as they are.

What holds on these models is tested: the scene comes through every stitch whole (what the demo's picture
claims, at the sampler's default t0 0.3), and, where the DiT generates most of the result (t0 0.9, near the
paper's start from noise, so neighbouring patches disagree), the fusion's and the global context's effects
in pixels. The proof that training-free sampling sharpens runs as an expected failure, with the reason below.
"""

from dataclasses import replace

import numpy as np
import pytest
from harness import figures, pixel_eval
from harness.trained import install
from PIL import Image

pytestmark = pytest.mark.integration

# The committed tiny models see (a recognisable scene through the whole pipeline), but their VAE is the
# ceiling (held-out 25.0 / 21.8 dB on 5 frames, goal 28; tests/tiny/README.md, Status): the HR clip through
# it scores no better than the sampler's bicubic start. Measured with the committed models (pinned host;
# chelsea 192x288 HR, 5 frames, 96-px patches, 4 steps, t0 0.3): PSNR naive 23.75, average 23.78, weighted
# 23.81, without context 23.99, the sampler's start 24.74, HR through the VAE 24.82, bicubic 33.72 dB;
# sharpness 0.396 against the start's 0.394. At t0 0.3 the DiT changes the start so little that seams and
# drift are alike in every mode (seam 1.20-1.32, drift 0.0084-0.0091), so those proofs run at t0 0.9
# (GENERATED). The sharpening proof runs as a strict expected failure: the day a better VAE makes it pass,
# the suite says so (XPASS fails it), and the mark comes off.
VAE_CEILING = pytest.mark.xfail(
    strict=True,
    reason="the tiny VAE is the ceiling: HR through it scores as the bicubic start (tests/tiny/README.md, Status)",
)

# Small enough for CI: 192x288 HR (24x36 latent cells), 5 frames, 96-pixel patches -> a 2x3 base grid with
# bridging patches, so several seams cross the frame.
CFG = pixel_eval.CompareConfig(photo="chelsea.png", hr_hw=(192, 288), photo_scale=1.5, patch_px=96, steps=4)
RUNS = {
    "naive": {"mode": "naive"},
    "average": {"mode": "average"},
    "weighted": {"mode": "weighted"},
    "weighted_noctx": {"mode": "weighted", "context": False},
}


# Where the DiT generates most of the result: t0 0.9, 8 steps. Seams are scored on the base grid's borders
# (pixel_eval.base_lines: where naive tiles meet), every mode on the same lines.
GENERATED = replace(CFG, t0=0.9, steps=8)
GENERATED_RUNS = {**RUNS, "shifted": {"mode": "shifted"}}


def run_and_measure(server, tiny_models, cfg, runs):
    """(frames, scores, videos) of one comparison prompt on the trained tiny models, its table printed."""
    install(tiny_models)
    frames, videos = pixel_eval.run_compare(server, cfg, runs)
    scores = pixel_eval.measures(pixel_eval.plan_of(cfg), frames)
    print("\n" + pixel_eval.table(scores))
    return frames, scores, videos


@pytest.fixture(scope="module")
def generated(server, tiny_models):
    return run_and_measure(server, tiny_models, GENERATED, GENERATED_RUNS)[1]


@pytest.fixture(scope="module")
def compared(server, tiny_models):
    return run_and_measure(server, tiny_models, CFG, RUNS)


@pytest.fixture(scope="module")
def measured(compared):
    return compared[1]


def test_the_scene_comes_through_every_stitch_whole(server, compared):
    """The demo's claim: a held-out scene goes through the whole pack and comes out whole. Every result is
    within 1.5 dB of the HR clip through the VAE (the most any latent method can reach with it; measured
    0.83-1.07 dB below with the committed models on the clip whose camera stays inside the photo, 0.88-1.04 on
    the clip before it, 0.55-0.66 with the models before VAE stages 3-4; coloured noise from a broken pipeline
    scores about 10 dB), the DiT changed the sampler's start (it ran), the mp4 was
    written, and the side-by-side picture is drawn from the frames."""
    frames, scores, videos = compared
    ceiling = scores["vae_hr"]["psnr"]
    assert ceiling > 20, scores["vae_hr"]
    for label in RUNS:
        assert scores[label]["psnr"] >= ceiling - 1.5, (label, scores[label], ceiling)
        assert np.abs(frames[label] - frames["vae_bicubic"]).max() > 2 / 255, label
    assert videos and all(v.stat().st_size > 0 for v in videos), videos
    png = figures.side_by_side(frames, scores, pixel_eval.plan_of(CFG), server.output_dir / "cmp" / "side.png")
    w, h = Image.open(png).size
    assert w >= 4 * CFG.hr_hw[1] and h >= 2 * CFG.hr_hw[0], (w, h)


def test_seams_in_pixels_naive_above_the_fused_modes(generated):
    """At the base grid's borders naive tiles leave more seam than every fused mode, and the shifted stitch
    no more than the weighted scheme there and on every line where any mode can leave a seam (its own
    grids' borders, the last step's included). Average and weighted are alike in pixels here: their
    difference is the four-patch "black hole", not a seam line. This test runs chelsea seed 0 with the
    committed models (pinned host): base borders naive 1.685, average 1.520, weighted 1.508, shifted 1.335;
    every line: weighted 1.254, shifted 1.177. Over 5 held-out runs (chelsea seeds 0-2, coffee seeds 0-1, t0
    0.9, the models before VAE stages 3-4 and the shifted stitch's weighted last step) weighted stayed within
    1.7% of average either way."""
    s = {k: generated[k]["seam_base"] for k in ("naive", "average", "weighted", "shifted")}
    assert s["naive"] > 1.05 * max(s["average"], s["weighted"]), s
    assert s["weighted"] <= 1.03 * s["average"], s
    assert s["shifted"] <= s["weighted"], s
    assert generated["shifted"]["seam"] <= generated["weighted"]["seam"], (generated["shifted"], generated["weighted"])


def test_global_context_lowers_colour_drift_in_pixels(generated):
    """Without the global context each patch invents its own tone; with it the patches agree: chelsea seed 0,
    committed models (pinned): drift 0.0141 with the context against 0.0413 without. Over 5 runs (models
    before VAE stages 3-4) it was 0.28-0.54 of the drift without. The shifted stitch's drift is the weighted
    scheme's within what one run can tell apart: 0.0144 against 0.0141 here, and within 6% of it either way
    over those 5 runs; the proxies (tests/unit/test_shifted.py) put it below weighted's at 4-20 steps."""
    d = {k: generated[k]["drift"] for k in ("weighted", "weighted_noctx", "shifted")}
    assert d["weighted"] < 0.7 * d["weighted_noctx"], d
    assert d["shifted"] <= 1.05 * d["weighted"], d


@VAE_CEILING
def test_training_free_sharpens_rather_than_destroys(measured):
    """SDEdit from the bicubic latent moves the result towards HR, not away: closer to HR than its own
    starting point (the bicubic latent decoded) in PSNR, and sharper."""
    free, start = measured["weighted"], measured["vae_bicubic"]
    assert free["psnr"] >= start["psnr"] - 0.1, (free, start)
    assert free["sharpness"] > start["sharpness"], (free, start)
