"""PatchVSR Long Video on a real server (issue 22): peak memory set by one chunk at 81, 321 and 961 frames;
a clip within one chunk gives exactly the short-clip graph's frames; a long clip keeps its exact frame rate,
its frame count and its sound, and its chunk borders flicker no more than the frames inside chunks; a killed
server and a cancelled run leave their finished chunks, and queueing the same prompt again resumes and gives
the uninterrupted run's frames; other settings start over; bad inputs are refused by name.

One server of its own, with one torch thread (the tiny Wan VAE is thousands of small ops; a second thread
costs more than it brings on the 2-core machines, and much more when other jobs share them), whose process
the memory test reads and the resume test kills.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import websocket
from einops import rearrange
from harness.fusion_proxies import flicker
from harness.paths import REPO, WORK
from harness.runs import INPUT_CLIP, make_clip, tiny_prompt
from harness.server import ComfyServer
from harness.tiny_models import DIT, DIT_I2V, VAE
from harness.trained import DIT_NAME, VAE_NAME, install
from tiny.photos import heldout_clip

from models.long_video import chunk_layout, to_uint8

pytestmark = pytest.mark.integration
RATE = Fraction(24000, 1001)  # NTSC film: a rate a float would round
NODE = "5"
WIDGETS = dict(
    target="scale", scale=2.0, keep_aspect=True, patch_width=0, patch_height=0, window_frames=0, seed=0,
    lora_name="None", lora_strength=1.0, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple", t0=0.3,
    patch_batch=1, strength=0.5, noise_t=0.15, anchor_with_adapter=False, encode_tile_px=512, decode_tile_px=512,
    decode_overlap_px=64, decode_temporal_frames=64, decode_temporal_overlap=8, chunk_overlap=2, crf=0,
    filename_prefix="long/test",
)  # fmt: skip
# The reference run: the trained tiny models (pictures that mean something, for the flicker measure) on a
# camera pan over a held-out photograph, 39 frames (padded to 41 for Wan's VAE; the padding is never written)
# at 24000/1001 fps with an AAC sound track; chunks of 17 frames sharing 2 latent (5 pixel) frames: 3 chunks.
PAN = {"frames": 39, "lr": 48}
REFERENCE = dict(window_frames=17, chunk_overlap=2, patch_width=96, patch_height=96, steps=3, t0=0.3)


def ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def write_clip(path: Path, frames: np.ndarray, rate: Fraction, sound: bool) -> Path:
    """frames: [N, H, W, 3] uint8 -> an H.264 mp4 at `rate`, with a 440 Hz AAC track as long as the video."""
    n, h, w, _ = frames.shape
    cmd = [ffmpeg(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(rate)]
    cmd += ["-i", "-"]
    if sound:
        cmd += ["-f", "lavfi", "-t", f"{float(n / rate):.4f}", "-i", "sine=frequency=440:sample_rate=48000"]
        cmd += ["-map", "0:v", "-map", "1:a", "-c:a", "aac"]
    cmd += ["-c:v", "libx264", "-crf", "10", "-pix_fmt", "yuv444p", str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True)
    return path


def pattern_clip(path: Path, w: int, h: int, frames: int, rate: Fraction = RATE) -> Path:
    """A moving test pattern (ffmpeg's testsrc2), H.264 4:2:0 with B-frames, no sound."""
    cmd = [ffmpeg(), "-y", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate={rate}"]
    subprocess.run(cmd + ["-frames:v", str(frames), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def lv(tiny_models):
    install(tiny_models)  # the trained tiny models, for the reference run
    base = WORK / "pytest-long-video"
    shutil.rmtree(base, ignore_errors=True)
    with ComfyServer(base, tiny_models, threads=1) as srv:
        pan = heldout_clip("coffee.png", (PAN["lr"], PAN["lr"]), PAN["frames"], seed=1)
        write_clip(srv.input_dir / "pan.mp4", to_uint8(rearrange(pan, "n c h w -> n h w c")), RATE, sound=True)
        for n in (81, 321, 961):
            pattern_clip(srv.input_dir / f"rss_{n}.mp4", 128, 96, n, Fraction(16))
        pattern_clip(srv.input_dir / "short.mp4", 48, 32, 9)
        pattern_clip(srv.input_dir / "chunks.mp4", 32, 24, 41)
        pattern_clip(srv.input_dir / "odd.mp4", 72, 40, 30)  # a width off 32 (ComfyUI 0.33 pads those to decode)
        (srv.input_dir / "broken.mp4").write_bytes(b"not a video" * 100)
        make_clip(srv.input_dir / INPUT_CLIP, frames=1)  # the shipped workflow's clip, as conftest makes it
        print(f"\n[time] server start and clips: CPU server {cpu_seconds(srv.proc.pid)[0]:.1f} s")
        yield srv


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(the process's own, its waited-for children's: ffmpeg) CPU seconds, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


# CPU seconds of server processes a test ended (the resume test kills one), for the test's time line.
ENDED: list[tuple[float, float]] = []


@pytest.fixture(autouse=True)
def timed(request, lv):
    """Prints each test's wall time and CPU time (server, its ffmpeg children, pytest): the machine is shared,
    so the CPU time is what the test costs."""
    wall, mine, pid = time.monotonic(), time.process_time(), lv.proc.pid
    server, children = cpu_seconds(pid)
    ENDED.clear()
    yield
    s, c = cpu_seconds(lv.proc.pid)
    if lv.proc.pid == pid:
        s, c = s - server, c - children
    else:  # restarted: the ended server's share, then all of the new one's (its start-up too)
        s, c = s + ENDED[0][0] - server, c + ENDED[0][1] - children
    print(f"\n[time] {request.node.name}: wall {time.monotonic() - wall:.1f} s; CPU server {s:.1f} s + "
          f"ffmpeg {c:.1f} s, pytest {time.process_time() - mine:.1f} s")  # fmt: skip


def long_prompt(file: str, dit: str = DIT.name, vae: str = VAE.name, cheap_vae=False, save=False, **widgets) -> dict:
    """Load Video -> PatchVSR Long Video (-> Save Video), on zero text conditioning."""
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": f"{dit}.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": f"{vae}.safetensors"}},
        "3": {"class_type": "PatchVSRTest_ZeroTextConditioning", "inputs": {"tokens": 8}},
        "4": {"class_type": "LoadVideo", "inputs": {"file": file}},
        NODE: {"class_type": "PatchVSR_LongVideo", "inputs": {
            "video": ["4", 0], "model": ["1", 0], "vae": ["6", 0] if cheap_vae else ["2", 0],
            "positive": ["3", 0], "negative": ["3", 0], **{**WIDGETS, **widgets}}},
    }  # fmt: skip
    if cheap_vae:
        prompt["6"] = {"class_type": "PatchVSRTest_CheapVAE", "inputs": {"vae": ["2", 0]}}
    if save:
        prompt["7"] = {"class_type": "SaveVideo", "inputs": {"video": [NODE, 0], "filename_prefix": "long/saved",
                                                            "format": "mp4", "codec": "h264"}}  # fmt: skip
    return prompt


def report(result) -> dict:
    assert result.status == "success", json.dumps(result.error)[:3000]
    return result.outputs[NODE]["patchvsr_long_video"][0]


def finished(server, result) -> Path:
    return server.output_dir / Path(WIDGETS["filename_prefix"]).parent / report(result)["file"]


def saved(server, result) -> Path:
    """The file Save Video wrote (node 7)."""
    (item,) = result.outputs["7"]["images"]
    return server.output_dir / item["subfolder"] / item["filename"]


def read_video(path: Path) -> np.ndarray:
    """[N, H, W, 3] uint8 frames, decoded to RGB."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def vmhwm_kib(pid: int) -> int:
    line = next(s for s in Path(f"/proc/{pid}/status").read_text().splitlines() if s.startswith("VmHWM"))
    return int(line.split()[1])


def test_peak_memory_is_one_chunks_at_81_321_and_961_frames(lv):
    """The server's peak RSS over a whole run (VmHWM, reset before each with clear_refs) does not grow from 5
    to 14 chunks and stays within 10% of one chunk's. 256x192 output frames: a float32 IMAGE of all 961 frames (what the short-clip graph holds)
    would be 567 MB, half the server's peak. The VAE is the CheapVAE test node: ComfyUI's own VAE with its
    tiled decode and buffers, around a pooling stand-in for the network (the tiny Wan VAE needs minutes for
    961 frames at this size); the DiT is the tiny Wan. Save Video stream-copies the result."""
    pid = lv.proc.pid
    peaks = {}
    for n in (81, 321, 961):
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        widgets = dict(window_frames=81, chunk_overlap=3, patch_width=256, patch_height=192, steps=1, crf=16)
        result = lv.run(long_prompt(f"rss_{n}.mp4", cheap_vae=True, save=True, filename_prefix=f"rss/{n}", **widgets))
        assert report(result)["chunks"] == len(chunk_layout(n, 81, 3).chunks)
        peaks[n] = vmhwm_kib(pid) / 1024
        with av.open(str(saved(lv, result))) as container:
            assert container.streams.video[0].frames == n
    whole = 961 * 192 * 256 * 3 * 4 / 2**20
    print(f"\npeak RSS (MiB) by clip length: {peaks}; a float32 IMAGE of 961 output frames: {whole:.0f} MiB")
    assert whole > 0.3 * min(peaks.values()), "frames too small for holding the clip to show"
    # One chunk has no hand-over (no previous tail, no cross-fade), so 81 frames peak a little lower; from 5 to
    # 14 chunks the 640 extra frames (361 MiB as float32) must add nothing beyond allocator noise (before the
    # node trimmed the C heap after each chunk, it crept up by 30-50 MiB here).
    extra = 640 * 192 * 256 * 3 * 4 / 2**20
    assert peaks[961] - peaks[321] <= 0.1 * extra, peaks
    assert max(peaks.values()) <= 1.10 * min(peaks.values()), peaks


def test_chunks_are_read_as_get_video_components_decodes_them(lv):
    """The frames a chunk reads from the file equal the host's own decode of the whole file, at chunk starts
    past keyframes and B-frames, and at a frame width ComfyUI 0.33 pads to decode."""
    prompt = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": "odd.mp4"}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "PatchVSRTest_SaveFrames", "inputs": {"images": ["2", 0], "tag": "read_whole"}},
    }
    ranges = [(0, 9), (8, 17), (13, 30), (29, 30)]
    for i, (a, b) in enumerate(ranges):
        prompt[f"1{i}"] = {
            "class_type": "PatchVSRTest_ReadFrames",
            "inputs": {"video": ["1", 0], "start": a, "stop": b},
        }
        prompt[f"2{i}"] = {"class_type": "PatchVSRTest_SaveFrames", "inputs": {"images": [f"1{i}", 0], "tag": f"read_{i}"}}  # fmt: skip
    result = lv.run(prompt)
    assert result.status == "success", json.dumps(result.error)[:3000]
    whole = np.load(lv.output_dir / "read_whole.npy")
    assert whole.shape == (30, 40, 72, 3)
    for i, (a, b) in enumerate(ranges):
        np.testing.assert_array_equal(np.load(lv.output_dir / f"read_{i}.npy"), whole[a:b], err_msg=f"frames {a}-{b}")


def add_short_graph(prompt: dict, images: list, w: dict, tag: str, at: int = 10) -> None:
    """Adds Partitioner, Upscale & Encode, Global Context, Sampler and Decode on `images` (a link) with the
    long-video node's widgets `w` and its loaders, the frames saved as <tag>.npy: the short-clip graph."""
    n = [str(at + i) for i in range(6)]
    prompt.update({
        n[0]: {"class_type": "PatchVSR_Partitioner", "inputs": {"model": ["1", 0], "images": images,
               **{k: w[k] for k in ("target", "scale", "keep_aspect", "patch_width", "patch_height", "window_frames")}}},
        n[1]: {"class_type": "PatchVSR_UpscaleEncode", "inputs": {"plan": [n[0], 0], "vae": ["2", 0], "images": images,
               "latent_mode": "decode-resize-encode", "tile_px": w["encode_tile_px"]}},
        n[2]: {"class_type": "PatchVSR_GlobalContext", "inputs": {"plan": [n[0], 0], "vae": ["2", 0], "images": images,
               "strength": w["strength"], "noise_t": w["noise_t"], "seed": w["seed"], "anchor_with_adapter": False}},
        n[3]: {"class_type": "PatchVSR_Sampler", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["3", 0],
               "latent": [n[1], 0], "plan": [n[0], 0], "context": [n[2], 0],
               **{k: w[k] for k in ("lora_name", "lora_strength", "seed", "steps", "cfg", "sampler_name", "scheduler",
                                    "t0", "patch_batch")}}},
        n[4]: {"class_type": "PatchVSR_Decode", "inputs": {"samples": [n[3], 0], "vae": ["2", 0],
               **{k: w[f"decode_{k}"] for k in ("tile_px", "overlap_px", "temporal_frames", "temporal_overlap")}}},
        n[5]: {"class_type": "PatchVSRTest_SaveFrames", "inputs": {"images": [n[4], 0], "tag": tag}},
    })  # fmt: skip


def test_a_clip_within_one_chunk_gives_the_short_graphs_frames(lv):
    """Load Video -> Get Video Components -> Partitioner, Upscale & Encode, Global Context, Sampler, Decode,
    against the long-video node on the same clip and widgets (9 frames: one chunk), lossless (crf 0):
    every 8-bit frame equal."""
    w = dict(WIDGETS, patch_width=64, patch_height=64, seed=5, steps=2, crf=0, filename_prefix="long/one")
    prompt = long_prompt("short.mp4", **w)
    prompt["9"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["4", 0]}}
    add_short_graph(prompt, ["9", 0], w, "short_graph")
    result = lv.run(prompt)
    assert report(result)["chunks"] == 1
    short = to_uint8(torch.from_numpy(np.load(lv.output_dir / "short_graph.npy")))
    long = read_video(lv.output_dir / "long" / report(result)["file"])
    assert long.shape == short.shape == (9, 64, 96, 3)
    assert np.array_equal(long, short), f"{int((long != short).sum())} values differ, by up to {np.abs(long.astype(int) - short).max()}"  # fmt: skip


def reference_prompt(prefix: str) -> dict:
    return long_prompt("pan.mp4", dit=DIT_NAME, vae=VAE_NAME, save=True, filename_prefix=prefix, **REFERENCE)


REFERENCE_RUN: dict = {}


def reference(lv):
    """The uninterrupted reference run: (result, frames), run by the first test that needs it."""
    if not REFERENCE_RUN:
        result = lv.run(reference_prompt("long/reference"))
        REFERENCE_RUN.update(result=result, frames=read_video(finished(lv, result)))
    return REFERENCE_RUN["result"], REFERENCE_RUN["frames"]


def audio_packets(path: Path) -> tuple[str, list[bytes]]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return stream.codec_context.name, [bytes(p) for p in container.demux(stream) if p.size]


def test_a_long_clip_keeps_its_rate_frames_and_sound_and_its_chunk_borders_do_not_flicker(lv):
    result, frames = reference(lv)
    layout = chunk_layout(PAN["frames"], REFERENCE["window_frames"], REFERENCE["chunk_overlap"])
    assert report(result) == {"chunks": 3, "frames": PAN["frames"], "file": report(result)["file"],
                              "computed": [0, 1, 2], "reused": []}  # fmt: skip
    out = finished(lv, result)
    assert frames.shape == (PAN["frames"], 96, 96, 3)
    with av.open(str(out)) as container:
        assert Fraction(container.streams.video[0].average_rate) == RATE
    assert audio_packets(out) == audio_packets(lv.input_dir / "pan.mp4"), "the sound was not copied as it is"
    assert np.array_equal(read_video(saved(lv, result)), frames)  # Save Video's copy: the same frames
    assert not list(out.parent.glob("*.work")), "the work folder stays after the run finished"
    # One progress bar over the whole video: every chunk's patch evaluations (1 patch x 3 steps each).
    bars = [m["data"] for m in result.messages if m["type"] == "progress" and m["data"].get("node") == NODE]
    assert bars and {b["max"] for b in bars} == {3 * REFERENCE["steps"]} and bars[-1]["value"] == bars[-1]["max"]
    # The chunk it works on, in the node's text (ComfyUI's progress text).
    texts = [text for node, text in result.texts if node == NODE]
    assert [t.split(":")[0] for t in texts if t.startswith("chunk")] == ["chunk 1 of 3", "chunk 2 of 3", "chunk 3 of 3"]
    # Frame-to-frame change where chunks hand over (the cross-faded frames and the first frame a chunk makes
    # on its own) against the change everywhere else (the flicker proxy, on the decoded 8-bit frames).
    borders = {c.start + i for c in layout.chunks[1:] for i in range(c.held + 1)}
    ratio = flicker(borders, rearrange(torch.from_numpy(frames).float() / 255, "n h w c -> 1 c n h w"))
    # Against a hard cut: chunk 2 made on its own (the short-clip graph on its frames, its seed, nothing held
    # or faded) after chunk 1's frames, measured into the cut frame and over the same hand-over frames.
    second = layout.chunks[1]
    w = dict(WIDGETS, **REFERENCE, seed=1)
    prompt = long_prompt("pan.mp4", dit=DIT_NAME, vae=VAE_NAME, **w)
    del prompt[NODE]
    prompt["8"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["4", 0]}}
    prompt["9"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["8", 0], "batch_index": second.start,
                                                              "length": second.frames}}  # fmt: skip
    add_short_graph(prompt, ["9", 0], w, "hard_cut")
    assert lv.run(prompt).status == "success"
    alone = to_uint8(torch.from_numpy(np.load(lv.output_dir / "hard_cut.npy")))
    end = layout.chunks[2].start
    cut = np.concatenate([frames[: second.start], alone[: end - second.start]])

    def proxy(x, at):
        return flicker(at, rearrange(torch.from_numpy(x[:end]).float() / 255, "n h w c -> 1 c n h w"))

    region = set(range(second.start, second.start + second.held + 1))
    measured = {name: (proxy(x, {second.start}), proxy(x, region)) for name, x in (("held", frames), ("cut", cut))}
    print(f"\nchunk-border flicker / inside: {ratio:.3f} over frames {sorted(borders)}; at the first border, "
          f"into its first frame / over its hand-over frames: held and faded {measured['held'][0]:.3f} / "
          f"{measured['held'][1]:.3f}, a hard cut {measured['cut'][0]:.3f} / {measured['cut'][1]:.3f}")  # fmt: skip
    assert ratio <= 1.0
    assert measured["held"][0] < measured["cut"][0] and measured["held"][1] < measured["cut"][1], measured


def test_a_killed_server_resumes_and_gives_the_uninterrupted_runs_frames(lv):
    frames = reference(lv)[1]
    prompt = reference_prompt("long/killed")
    out = lv.output_dir / "long"

    def kill_after_first_chunk(msg):
        if list(out.glob("killed_*.work/seg_00000.mp4")) and not ENDED:
            ENDED.append(cpu_seconds(lv.proc.pid))
            os.kill(lv.proc.pid, signal.SIGKILL)

    with pytest.raises((RuntimeError, OSError, websocket.WebSocketException)):
        lv.run(prompt, on_message=kill_after_first_chunk)
    lv.proc.wait(timeout=30)
    (work,) = out.glob("killed_*.work")
    kept = sorted(p.name for p in work.glob("seg_*.mp4"))
    assert 1 <= len(kept) < 3 and not list(out.glob("killed_*.mp4")), kept
    lv.stop()
    lv.start()  # the same folders: what an artist's restarted ComfyUI sees
    result = lv.run(prompt)
    done = report(result)
    assert done["reused"] == list(range(len(kept))) and done["computed"] == list(range(len(kept), 3)), done
    assert np.array_equal(read_video(finished(lv, result)), frames)
    assert not work.exists()


def test_cancel_keeps_finished_chunks_other_settings_start_over_and_a_requeue_resumes(lv):
    """5 chunks of 9 frames on the random tiny models: cancelled after the first chunk is written; a run with
    another seed computes every chunk (none of the cancelled run's); the cancelled prompt queued again reuses
    what it had finished."""
    w = dict(window_frames=9, chunk_overlap=1, patch_width=64, patch_height=48, filename_prefix="long/cancel")
    out = lv.output_dir / "long"

    def cancel_after_first_chunk(msg):
        if list(out.glob("cancel_*.work/seg_00000.mp4")):
            lv.interrupt()

    result = lv.run(long_prompt("chunks.mp4", **w), on_message=cancel_after_first_chunk)
    assert result.status == "interrupted"
    (work,) = out.glob("cancel_*.work")
    kept = sorted(p.name for p in work.glob("seg_*.mp4"))
    assert kept and not list(work.glob("*.partial*")), list(work.iterdir())
    other = report(lv.run(long_prompt("chunks.mp4", **{**w, "seed": 1})))
    assert other["computed"] == list(range(5)) and other["reused"] == []
    again = report(lv.run(long_prompt("chunks.mp4", **w)))
    assert again["reused"] == list(range(len(kept))) and len(again["computed"]) == 5 - len(kept), again


def test_the_shipped_workflow_runs_through_the_api(lv):
    """workflows/patchvsr_long_video_4k.json converted to an API prompt by the server's /object_info (widget
    order, links), on the tiny models: Load Video -> PatchVSR Long Video -> Save Video. At the clip's own size
    (target scale 1, one patch): the 4K run itself is the browser test's, which runs every shipped workflow."""
    prompt = tiny_prompt(REPO / "workflows" / "patchvsr_long_video_4k.json", lv.object_info(), steps=2)
    (node,) = [n for n in prompt.values() if n["class_type"] == "PatchVSR_LongVideo"]
    assert node["inputs"]["target"] == "4K" and node["inputs"]["steps"] == 2
    node["inputs"].update(target="scale", scale=1.0, patch_width=256, patch_height=144)
    result = lv.run(prompt)
    assert result.status == "success", json.dumps(result.error)[:3000]
    (video,) = result.files(lv.output_dir)
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.frames) == (256, 144, 1)


def rejected_or_failed(server, prompt) -> str:
    result = server.run(prompt)
    assert result.status in ("rejected", "error"), result.status
    return json.dumps(result.error)


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"drop": "video"}, ["video"]),
        ({"components": True}, ["video:", "held in memory"]),
        ({"file": "broken.mp4"}, ["video:", "cannot be read"]),
        ({"window_frames": 80}, ["window_frames", "77 or 81"]),
        ({"window_frames": 9, "chunk_overlap": 2}, ["chunk_overlap", "1 to 1"]),
        ({"patch_width": 256}, ["patch_width", "larger than the target"]),
        ({"decode_overlap_px": 512}, ["decode_overlap_px", "decode_tile_px"]),
        ({"filename_prefix": "../elsewhere"}, ["filename_prefix", "outside the output folder"]),
        ({"dit": DIT_I2V.name}, ["model:", "T2V"]),
    ],
    ids=[
        "no-video",
        "video-without-file",
        "not-a-video",
        "window-not-1+4k",
        "overlap-too-large",
        "patch-too-large",
        "decode-overlap",
        "prefix-outside-output",
        "i2v-model",
    ],  # fmt: skip
)
def test_bad_inputs_are_refused_by_name(lv, change, names):
    widgets = {"patch_width": 64, "patch_height": 48, **change}
    file, dit = widgets.pop("file", "chunks.mp4"), widgets.pop("dit", DIT.name)
    drop, components = widgets.pop("drop", None), widgets.pop("components", False)
    prompt = long_prompt(file, dit=dit, **widgets)
    if drop:
        del prompt[NODE]["inputs"][drop]
    if components:
        prompt["8"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["4", 0]}}
        prompt["9"] = {"class_type": "CreateVideo", "inputs": {"images": ["8", 0], "fps": 16.0}}
        prompt[NODE]["inputs"]["video"] = ["9", 0]
    text = rejected_or_failed(lv, prompt)
    assert all(n in text for n in names), text[:2000]
