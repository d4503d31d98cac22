"""Pixel-space proofs (issue 11) on the tiny models trained here (harness/trained.py): a held-out clip,
downscaled 2x and upscaled back by the shipped 2K workflow through the real server, once per stitch mode
and once without the global context, all in one prompt. The decoded frames are measured against the HR
clip (harness/pixel_eval.py). The latent-space proofs (test_joint, test_adapter_proof) stay as they are.
"""

import pytest
from harness import pixel_eval
from harness.trained import install

# Skipped until the committed tiny models see: the VAE now reconstructs held-out photos at 23.6 / 19.3 dB
# (goal 28), and the committed DiT was trained on an earlier VAE's latents (tests/tiny/README.md, "Status").
# Measured with that earlier, flat-grey VAE (both hosts, about 510 s on the loaded machine; chelsea, 192x288
# HR, PSNR 15.05 dB for every result and for the HR clip through the VAE): seam naive 0.0043, average 0.0044,
# weighted 0.0043 (not ordered), drift with and without context equal to 1e-6.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skip(reason="the committed tiny models are not trained far enough yet (tests/tiny/README.md, Status)"),
]

# Small enough for CI: 192x288 HR (24x36 latent cells), 5 frames, 96-pixel patches -> a 2x3 base grid with
# bridging patches, so several seams cross the frame.
CFG = pixel_eval.CompareConfig(photo="chelsea.png", hr_hw=(192, 288), photo_scale=1.5, patch_px=96, steps=4)
RUNS = {
    "naive": {"mode": "naive"},
    "average": {"mode": "average"},
    "weighted": {"mode": "weighted"},
    "weighted_noctx": {"mode": "weighted", "context": False},
}


@pytest.fixture(scope="module")
def measured(server, tiny_models):
    install(tiny_models)
    frames, _ = pixel_eval.run_compare(server, CFG, RUNS)
    scores = pixel_eval.measures(pixel_eval.plan_of(CFG), frames)
    print("\n" + pixel_eval.table(scores))
    return scores


def test_seams_in_pixels_naive_above_average_above_weighted(measured):
    s = {k: measured[k]["seam"] for k in ("naive", "average", "weighted", "hr")}
    assert s["naive"] > s["average"] >= s["weighted"], s


def test_global_context_lowers_colour_drift_in_pixels(measured):
    assert measured["weighted"]["drift"] < measured["weighted_noctx"]["drift"], {
        k: measured[k]["drift"] for k in ("weighted", "weighted_noctx")
    }


def test_training_free_sharpens_rather_than_destroys(measured):
    """SDEdit from the bicubic latent moves the result towards HR, not away: closer to HR than its own
    starting point (the bicubic latent decoded) in PSNR, and sharper."""
    free, start = measured["weighted"], measured["vae_bicubic"]
    assert free["psnr"] >= start["psnr"] - 0.1, (free, start)
    assert free["sharpness"] > start["sharpness"], (free, start)
