"""The pack's VAE steps against ComfyUI's own nodes, on the host's real Wan VAE loader and the tiny Wan 2.1 VAE.

PatchVSR Upscale & Encode with one tile is core's Upscale Image (bicubic) then VAE Encode.

PatchVSR VAE Decode (nodes/encode.py decode_stream, also the long-video path's) runs the host's tiled decode on
temporal slices of the latent and cross-fades the frames two slices share, so that memory holds one slice.
Against core's VAE Decode (Tiled): with one slice it is core's tiled decode exactly; with several, every slice's
frames are core's tiled decode of that slice's latent frames, placed where the whole clip has them, and shared
frames are the linear cross-fade of the two slices'. (How close slices come to decoding the whole clip at once
is not a question for random weights: each slice restarts the causal VAE, which dominates there.)"""

import json

import numpy as np
import pytest
from harness.paths import REPO
from harness.runs import make_clip, tiny_prompt
from harness.tiny_models import VAE
from harness.workflow import override, prune

pytestmark = pytest.mark.integration
# 5 latent frames (17 video frames) of 24 x 32 cells (192 x 256 px): 2 x 3 spatial tiles of 128 px. The overlap
# is a quarter of the tile: core's node lowers a larger one to that (the pack's allows up to half).
LATENT = {"channels": 16, "frames": 5, "height": 24, "width": 32, "seed": 11}
TILES = {"tile_px": 128, "overlap_px": 32}
T = LATENT["frames"]


def core_tiled(samples: list, temporal_frames: int, temporal_overlap: int) -> dict:
    return {"class_type": "VAEDecodeTiled", "inputs": {
        "samples": samples, "vae": ["1", 0], "tile_size": TILES["tile_px"], "overlap": TILES["overlap_px"],
        "temporal_size": temporal_frames, "temporal_overlap": temporal_overlap}}  # fmt: skip


def save(images: list, tag: str) -> dict:
    return {"class_type": "PatchVSRTest_SaveFrames", "inputs": {"images": images, "tag": tag}}


def slices(temporal_frames: int, temporal_overlap: int) -> list[tuple[int, int]]:
    """The latent frames [a, b) of each slice, from the decode node's documented rule: slices of
    temporal_frames / 4 latent frames, consecutive ones sharing temporal_overlap / 4 (at least one)."""
    span = max(2, temporal_frames // 4)
    shared = min(max(1, temporal_overlap // 4), span - 1)
    out, a = [], 0
    while True:
        b = min(a + span, T)
        out.append((a, b))
        if b >= T:
            return out
        a = b - shared


def run(server, temporal_frames: int, temporal_overlap: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The pack's decode of the latent, and core's tiled decode of each slice's latent frames on its own."""
    pack = TILES | {"temporal_frames": temporal_frames, "temporal_overlap": temporal_overlap}
    prompt = {
        "1": {"class_type": "VAELoader", "inputs": {"vae_name": f"{VAE.name}.safetensors"}},
        "2": {"class_type": "PatchVSRTest_RandomLatent", "inputs": LATENT},
        "3": {"class_type": "PatchVSR_Decode", "inputs": {"samples": ["2", 0], "vae": ["1", 0], **pack}},
        "4": save(["3", 0], "decode_pack"),
    }
    parts = slices(temporal_frames, temporal_overlap)
    for i, (a, b) in enumerate(parts):
        prompt[f"1{i}"] = {"class_type": "PatchVSRTest_LatentFrames", "inputs": {"samples": ["2", 0], "start": a, "stop": b}}  # fmt: skip
        prompt[f"2{i}"] = core_tiled([f"1{i}", 0], 4 * (b - a) + 4, 8)  # one temporal tile: the whole slice
        prompt[f"3{i}"] = save([f"2{i}", 0], f"decode_core_{i}")
    server.clear_cache()
    result = server.run(prompt)
    assert result.status == "success", json.dumps(result.error)[:3000]
    load = lambda tag: np.load(server.output_dir / f"{tag}.npy")  # noqa: E731
    return load("decode_pack"), [load(f"decode_core_{i}") for i in range(len(parts))]


def test_one_slice_is_cores_tiled_decode(server):
    """temporal_frames covers the clip: one slice, ComfyUI's tiled decode with the same spatial tiles."""
    pack, (core,) = run(server, temporal_frames=64, temporal_overlap=8)
    assert pack.shape == core.shape == (17, 192, 256, 3), (pack.shape, core.shape)
    assert np.array_equal(pack, core), np.abs(pack - core).max()


@pytest.mark.parametrize(("temporal_frames", "temporal_overlap"), [(8, 4), (16, 8)])
def test_slices_are_cores_decodes_cross_faded(server, temporal_frames, temporal_overlap):
    """Several slices. A slice from latent frame a decodes its first latent frame to one frame, which the whole
    clip has at frame 4a (a causal VAE's start, where core's own temporal tiling puts it), and each later
    latent frame to 4 frames; where the previous slice also has a frame, the two fade linearly from the
    previous slice's to this one's."""
    pack, cores = run(server, temporal_frames, temporal_overlap)
    parts = slices(temporal_frames, temporal_overlap)
    assert len(parts) >= 2, parts
    expected = np.zeros_like(pack)
    covered = np.zeros(len(pack), dtype=bool)
    for (a, b), frames in zip(parts, cores):
        assert len(frames) == 1 + 4 * (b - a - 1), (a, b, frames.shape)
        at = 4 * a
        shared = covered[at : at + len(frames)].sum()  # the frames the previous slice has too: the first ones
        w = ((np.arange(shared, dtype=np.float32) + 1) / (shared + 1)).reshape(-1, 1, 1, 1)
        expected[at : at + shared] = expected[at : at + shared] * (1 - w) + frames[:shared] * w
        expected[at + shared : at + len(frames)] = frames[shared:]
        covered[at : at + len(frames)] = True
    assert covered.all() and pack.shape == expected.shape == (17, 192, 256, 3), (covered, pack.shape)
    assert np.allclose(pack, expected, rtol=0, atol=1e-6), np.abs(pack - expected).max()


def test_one_encode_tile_is_cores_bicubic_upscale_and_encode(server, object_info):
    """The shipped 2K graph's Upscale & Encode with a tile that covers the frame, against core's Upscale Image
    (bicubic, no crop) to the plan's target and core's VAE Encode of that. The clip's values lie in
    [0.25, 0.75], where bicubic overshoot stays inside [0, 1]: the pack clamps upscaled pixels to [0, 1]
    (valid images for the VAE) and core does not."""
    make_clip(server.input_dir / "clip_mid.mp4", width=128, height=80, frames=5, levels=(0.25, 0.75))
    prompt = tiny_prompt(REPO / "workflows" / "patchvsr_2k_from_video.json", object_info)
    prompt = override(prompt, "LoadVideo", file="clip_mid.mp4")
    prompt = override(prompt, "PatchVSR_Partitioner", target="scale", scale=2.0, patch_width=128, patch_height=80)
    prompt = override(prompt, "PatchVSR_UpscaleEncode", tile_px=4096)
    (enc,) = [k for k, n in prompt.items() if n["class_type"] == "PatchVSR_UpscaleEncode"]
    images, vae = prompt[enc]["inputs"]["images"], prompt[enc]["inputs"]["vae"]
    for k in [k for k, n in prompt.items() if object_info[n["class_type"]].get("output_node")]:
        del prompt[k]
    prompt["900"] = {"class_type": "ImageScale", "inputs": {
        "image": images, "upscale_method": "bicubic", "width": 256, "height": 160, "crop": "disabled"}}  # fmt: skip
    prompt["901"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["900", 0], "vae": vae}}
    prompt["902"] = {"class_type": "PatchVSRTest_LatentDiff", "inputs": {"samples": [enc, 0], "reference": ["901", 0], "tag": "encode"}}  # fmt: skip
    prune(prompt, object_info)
    server.clear_cache()
    result = server.run(prompt)
    assert result.status == "success", json.dumps(result.error)[:3000]
    (diff,) = result.outputs["902"]["patchvsr_diff"]
    print(f"one-tile encode against core's: {diff}")
    assert diff["shape"] == [1, 16, 2, 20, 32], diff
    assert diff["max_abs_diff"] <= 1e-5 * max(1.0, diff["ref_max_abs"]), diff
