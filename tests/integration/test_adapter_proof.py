"""The adapter learns: trained with the command line trainer on procedural clips, loaded through the loader
node in the real server, it beats training-free PatchVSR and bicubic on held-out clips (harness/proof.py
explains the data, the pre-trained tiny base and why PSNR is measured on latents)."""

import pytest
from harness.paths import WORK
from harness.proof import run_proof

pytestmark = pytest.mark.integration


def test_trained_adapter_beats_training_free_and_bicubic(server, tiny_models, capsys):
    lines = []
    scores, vals = run_proof(server, tiny_models, WORK / "proof", log=lines.append)
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    mean = {k: sum(v) / len(v) for k, v in scores.items()}
    assert vals[0][0] == 0 and vals[-1][1] < 0.9 * vals[0][1], f"validation loss did not fall clearly: {vals}"
    assert mean["adapter"] > mean["training-free"] + 0.3, mean
    assert mean["adapter"] > mean["bicubic"] + 0.3, mean
    # On every held-out clip, not just on average.
    assert all(a > max(f, b) for a, f, b in zip(scores["adapter"], scores["training-free"], scores["bicubic"])), scores
