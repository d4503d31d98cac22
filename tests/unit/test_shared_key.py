"""The key under which both hosts share a trained proof adapter (harness/shared.py): the same model in each
host's own folder, written by each host's ComfyUI with its metadata in another order, gives the same key;
another tensor or another code file gives another."""

import pytest
import torch
from harness.shared import fingerprint
from safetensors.torch import save_file

pytestmark = pytest.mark.pure


def test_same_model_in_two_hosts_folders_shares_a_key(tmp_path):
    weights = {"a": torch.arange(6.0), "b": torch.ones(2, 3)}
    pinned, newer = tmp_path / "pinned" / "dit.safetensors", tmp_path / "0.33" / "dit.safetensors"
    for path, meta in ((pinned, {"seed": "0", "dim": "128"}), (newer, {"dim": "128", "seed": "0"})):
        path.parent.mkdir()
        save_file(weights, str(path), metadata=meta)
    assert fingerprint(["cfg", pinned]) == fingerprint(["cfg", newer])
    other = tmp_path / "other" / "dit.safetensors"
    other.parent.mkdir()
    save_file({**weights, "b": torch.zeros(2, 3)}, str(other), metadata={"seed": "0", "dim": "128"})
    assert fingerprint(["cfg", other]) != fingerprint(["cfg", pinned])
    assert fingerprint(["cfg2", pinned]) != fingerprint(["cfg", pinned])
