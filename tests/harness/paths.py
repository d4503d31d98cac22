"""Where the test host keeps things. Everything is under the repo so a clean clone starts clean."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("PATCHVSR_VENV", REPO / ".venv"))
WORK = Path(os.environ.get("PATCHVSR_WORK", REPO / ".work"))  # cached tiny models, server base dirs


def comfy_root() -> Path:
    """The ComfyUI folder that .ci/bootstrap installed (recorded in the venv)."""
    marker = VENV / "comfyui-root"
    if not marker.exists():
        raise RuntimeError(f"no ComfyUI host at {VENV}: run `bash .ci/bootstrap` first")
    return Path(marker.read_text().strip())


def host_python() -> str:
    """The interpreter with torch and ComfyUI's requirements: this one when it runs from the venv."""
    candidate = VENV / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable
