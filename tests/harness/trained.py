"""The tiny models trained here (tests/tiny), committed under tests/assets/models and checked by sha256
before a server sees them. Unlike tiny_models.py's random weights these are trained (the VAE as an
autoencoder of photographs, the DiT as a rectified-flow model of their latents) so that pixels can mean
something; the files committed now are undertrained (tests/tiny/README.md, Status).

Reproduce them with the commands in tests/tiny/README.md (CI never retrains).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from .paths import REPO

ASSETS = REPO / "tests" / "assets"
VAE_NAME = "patchvsr-tiny-wan21-vae-photo"
DIT_NAME = "patchvsr-tiny-wan21-t2v-photo"
# folder under the models dir, file name, sha256 of the committed file (tests/tiny prints it after training)
FILES = {
    "vae": ("vae", f"{VAE_NAME}.safetensors", "80d17ae83b8406b2d64bf83e481543511c7d79bd85edbe9188dd74cfa54b1afe"),
    "dit": (
        "diffusion_models",
        f"{DIT_NAME}.safetensors",
        "349cbd4303df474474cf7345b24a0093a8629a5685943de49c0e4157bf6158b8",
    ),
}
# The DiT's shape, as tests/tiny/train_dit.py builds it (ComfyUI detects it from the file; the proof's
# in-process copy needs it spelled out).
DIT_DIM, DIT_LAYERS, DIT_FFN = 128, 4, 512


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def source(key: str) -> Path:
    folder, name, _ = FILES[key]
    return ASSETS / "models" / folder / name


def install(models_dir: Path) -> dict[str, Path]:
    """Copies the committed trained models into a server's models dir after checking their sha256."""
    out = {}
    for key, (folder, name, digest) in FILES.items():
        src = source(key)
        got = sha256(src)
        if got != digest:
            raise RuntimeError(
                f"{src} has sha256 {got}, not the recorded {digest}: the file is damaged (a Git LFS pointer?) "
                "or was retrained without updating tests/harness/trained.py"
            )
        dest = Path(models_dir) / folder / name
        if not dest.exists() or dest.stat().st_size != src.stat().st_size or sha256(dest) != digest:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
        out[key] = dest
    return out
