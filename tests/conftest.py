"""Shared fixtures. Unit tests import the pure-PyTorch core directly; integration tests get one real
ComfyUI server per session (see tests/host)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The repo root (for the pure-PyTorch `models` package) and tests/ (for the `harness` package). The pack's
# own __init__.py is never imported here: it needs a running ComfyUI.
for path in (REPO, REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from harness.paths import WORK  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models() -> Path:
    from harness.tiny_models import ensure_in_subprocess

    return ensure_in_subprocess(WORK / "models")


@pytest.fixture(scope="session")
def server(tiny_models):
    from harness.runs import make_clip
    from harness.server import ComfyServer

    base = WORK / "pytest-server"
    shutil.rmtree(base, ignore_errors=True)
    # The real web frontend for the browser tests, and live previews as an artist's server sends them.
    with ComfyServer(base, tiny_models, frontend=True, preview_method="latent2rgb") as srv:
        # 1 frame keeps the 2K/4K decode of the tiny VAE inside CI's time on 2 cores.
        make_clip(srv.input_dir / "patchvsr_example.mp4", frames=1)
        make_clip(srv.input_dir / "clip_5f.mp4", width=128, height=80, frames=5)
        make_clip(srv.input_dir / "clip_4f.mp4", width=128, height=80, frames=4)
        yield srv


@pytest.fixture(scope="module")
def small_op_server(tiny_models):
    """A second server with one torch thread, for long runs of many tiny-model calls (the sampler matrix):
    there one thread is faster than two on the 2-core machines (see ComfyServer's `threads`)."""
    from harness.server import ComfyServer

    base = WORK / "pytest-server-1thread"
    shutil.rmtree(base, ignore_errors=True)
    with ComfyServer(base, tiny_models, threads=1) as srv:
        yield srv


@pytest.fixture(scope="session")
def object_info(server) -> dict:
    return server.object_info()


# The adapter proofs' trainings run once for both hosts (harness.shared); a host that reaches one while the
# other trains it waits. With the hosts side by side, each starts with a different proof, so the two trainings
# run at once, one per core, and each host later samples the adapter the other trained (CI once waited 5 min
# here). The pinned host keeps the file's order (latents, then pixels); any other host runs the pixel proof
# first and the latent proof last.
PROOFS = "integration/test_adapter_proof.py::"
LATENT_PROOF = PROOFS + "test_trained_adapter_beats_training_free_and_bicubic"
PIXEL_PROOF = PROOFS + "test_trained_adapter_beats_training_free_in_pixels"


def pytest_collection_modifyitems(config, items):
    from harness.paths import HOST

    if HOST == "pinned":
        return
    by_id = {item.nodeid: item for item in items}
    first, last = by_id.get(PIXEL_PROOF), by_id.get(LATENT_PROOF)
    rest = [item for item in items if item not in (first, last)]
    items[:] = ([first] if first else []) + rest + ([last] if last else [])
