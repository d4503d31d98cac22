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
    "vae": ("vae", f"{VAE_NAME}.safetensors", "bce79abcba2aef76f1338d5a8b7f7dc6be3dd58dd066fa4076b5a70c4924c708"),
    "dit": (
        "diffusion_models",
        f"{DIT_NAME}.safetensors",
        "06131e7dfc43105dc82c44ba6e316faa7b516bc72b0d378f39e72b5d78a10dd5",
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
