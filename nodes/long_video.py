"""PatchVSR Long Video: a whole shot from a video file to a video file, one temporal window (chunk) at a
time, in memory bounded by one chunk; finished chunks stay on disk, so a cancelled, crashed or killed run
resumes where it stopped; the source's exact frame rate and its sound are kept.

The work for one output lives in a folder beside it, named by a hash of everything that changes the frames
(models/long_video.py IDENTITY_KEYS): other settings never reuse its chunks.

    <output>/<prefix>_<clip>_<key>.mp4           the finished video (written as .partial, renamed when complete)
    <output>/<prefix>_<clip>_<key>.work/          while it runs: manifest.json, seg_00000.mp4 (chunk 0's frames
                                                  up to the next chunk's start), ..., tail_00000.npy (chunk 0's
                                                  last frames, which chunk 1 holds and cross-fades)

Dimension legend: N pixel frames, H/W pixel rows/columns, C latent channels, T latent frames, h/w latent cells.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import comfy.model_management
import folder_paths
import imageio_ffmpeg
import numpy as np
import torch
from comfy_api.latest import Input, InputImpl, io

from ..models.blend import StitchConfig
from ..models.context import ContextConfig
from ..models.joint import FusionSchedule
from ..models.long_video import (
    LAYOUT_VERSION,
    ChunkLayout,
    chunk_layout,
    chunk_seed,
    cross_fade,
    fingerprint,
    max_overlap,
    pad_frames,
    run_key,
    to_uint8,
)
from .context import GlobalContextEncoder, encode_context
from .encode import DecodeTiles, check_tiles, decode_stream, encode_upscaled
from .host import Progress, check_vae, model_family
from .partition import PatchPartitioner, PlanSettings, plan_video
from .sampler import PatchSampler, SamplerSettings, check_conditioning, sample
from .sockets import CATEGORY, AdapterType, StitcherType
from .validate import frames_error, widget_errors

log = logging.getLogger(__name__)

PLAN_WIDGETS = tuple(f.name for f in dataclasses.fields(PlanSettings))
SAMPLER_WIDGETS = tuple(f.name for f in dataclasses.fields(SamplerSettings))
CONTEXT_WIDGETS = ("strength", "noise_t", "anchor_with_adapter")
DECODE_PREFIX = "decode_"
MANIFEST = "manifest.json"
# Frames converted to 8 bits and sent to the encoder at a time: the uint8 copy of a whole chunk is never made.
WRITE_GROUP = 8


# -- the source file ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A video file, as far as the long-video path reads it without decoding it."""

    path: str
    lr_hw: tuple[int, int]  # frame size in pixels (h, w)
    pts: tuple[int, ...]  # presentation time of each frame, in the stream's time base, in order
    time_base: Fraction
    frame_rate: Fraction  # the stream's average rate, exactly (24000/1001 stays 24000/1001)
    audio: bool  # whether it has a sound track to copy

    @property
    def frames(self) -> int:
        return len(self.pts)


def open_source(video) -> Source:
    """The file behind a VIDEO, checked, with the timestamps of its frames (read from the packets: no frame
    is decoded), or a ValueError naming `video` and a fix."""
    if video is None:
        raise ValueError("video: nothing connected. Connect a Load Video node (core ComfyUI) with your clip.")
    # A VIDEO made from frames (Create Video) has no file: its get_stream_source would encode the whole clip
    # into memory, which is what this node exists to avoid.
    if type(video).get_stream_source is Input.Video.get_stream_source:
        raise ValueError(
            f"video: this VIDEO ({type(video).__name__}) is held in memory, not a file. Connect Load Video with "
            "the clip itself; for frames made by other nodes, save them with Save Video and load that file."
        )
    path = video.get_stream_source()
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise ValueError(
            f"video: the VIDEO's source is {type(path).__name__} {str(path)[:200]!r}, not a file on disk. Connect "
            "Load Video with a file from ComfyUI's input folder."
        )
    trim = getattr(video, "get_active_trim_window", None)
    if trim is not None and tuple(trim()) != (0.0, 0.0):
        start, duration = trim()
        raise ValueError(
            f"video: trimmed to {duration or 'the end'} s from {start} s (Trim Video). The long-video node reads "
            "and copies the sound of whole files: trim the file itself (e.g. ffmpeg -ss START -t LENGTH -i IN "
            "-c copy OUT.mp4) or connect Load Video directly."
        )
    path = os.path.realpath(path)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"video: '{os.path.basename(path)}' has no video stream. Connect a video file.")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            audio = any(s.codec_context is not None for s in container.streams.audio)
            pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.size and not p.is_discard)
            hw = (stream.height, stream.width)
            time_base = Fraction(stream.time_base)
    except av.error.FFmpegError as e:
        raise ValueError(
            f"video: '{os.path.basename(path)}' cannot be read as a video ({e}). Re-save it as mp4 (H.264)."
        ) from e
    if not pts:
        raise ValueError(
            f"video: '{os.path.basename(path)}' has no frames with timestamps (an empty file or a raw stream). "
            "Re-mux it into mp4: ffmpeg -i IN -c copy OUT.mp4."
        )
    if not rate:
        raise ValueError(f"video: '{os.path.basename(path)}' has no frame rate. Re-mux it with ffmpeg -r RATE.")
    if len(set(pts)) != len(pts):
        raise ValueError(
            f"video: '{os.path.basename(path)}' has frames with equal timestamps. Re-mux it: "
            "ffmpeg -i IN -c copy OUT.mp4."
        )
    return Source(path, hw, tuple(pts), time_base, Fraction(rate), audio)


def read_frames(video, source: Source, start: int, stop: int) -> torch.Tensor:
    """Frames start..stop-1 of the source -> [n, h, w, 3] float32 RGB in [0, 1], decoded as the host's own Get
    Video Components decodes them: through the host where it can decode part of a file (ComfyUI 0.33's
    as_trimmed), else as the older hosts' get_components does (rgb24 / 255), seeking to the chunk."""
    n = stop - start
    pts, tb = source.pts, source.time_base

    def between(i: int) -> float:
        # Half a frame before frame i: however the host rounds these seconds back to a timestamp, it lands
        # after frame i - 1 and at or before frame i.
        return float((pts[i] - (pts[i] - pts[i - 1]) / 2) * tb) if i > 0 else 0.0

    if hasattr(video, "as_trimmed"):
        begin = between(start)
        duration = between(stop) - begin if stop < len(pts) else 0.0  # 0: to the end
        images = video.as_trimmed(start_time=begin, duration=duration, strict_duration=False).get_components().images
        frames = images[..., :3]
    else:
        frames = torch.empty(n, *source.lr_hw, 3)
        got = []
        with av.open(source.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if start > 0:
                container.seek(pts[start], stream=stream)  # the keyframe at or before the chunk's first frame
            for frame in container.decode(stream):
                if frame.pts is None or frame.pts < pts[start]:
                    continue
                if len(got) == n:
                    break
                frames[len(got)] = torch.from_numpy(frame.to_ndarray(format="rgb24")) / 255.0
                got.append(frame.pts)
        if got != list(pts[start:stop]):
            raise ValueError(
                f"video: frames {start}-{stop - 1} of '{os.path.basename(source.path)}' decode as {len(got)} frames "
                "with other timestamps than its packets say. Re-encode the file (ffmpeg -i IN -c:v libx264 OUT.mp4)."
            )
    if tuple(frames.shape) != (n, *source.lr_hw, 3):
        raise ValueError(
            f"video: frames {start}-{stop - 1} of '{os.path.basename(source.path)}' decoded as shape "
            f"{list(frames.shape)}, expected [{n}, {source.lr_hw[0]}, {source.lr_hw[1]}, 3] (a file with a variable "
            "frame size or timestamps that do not match its frames). Re-encode it: ffmpeg -i IN -c:v libx264 OUT.mp4."
        )
    return frames


def file_identity(path: str) -> dict:
    """The source's identity: its path, size and modification time, and a hash of its first and last MiB
    (a file replaced by another of the same size and time is caught without reading it all)."""
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, st.st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ends_sha256": h.hexdigest()}


# -- what the frames are made from --------------------------------------------------------------------------


def weights_sample(module: torch.nn.Module, picks: int = 8) -> dict:
    """A few of a module's parameters (spread over its layers, always the last), for a cheap fingerprint."""
    params = list(module.named_parameters())
    chosen = params[:: max(1, len(params) // picks)][:picks] + params[-1:]
    return dict(chosen)


def model_identity(model) -> str:
    """A fingerprint of a MODEL: some of its weights, its patches (LoRAs, with their tensors), the noise levels
    of its model sampling (a changed shift), and the names of the options, wrappers and object patches other
    nodes put on it."""
    ms = model.get_model_object("model_sampling")
    return fingerprint({
        "weights": weights_sample(model.model.diffusion_model),
        "dtype": model.model.get_dtype(),
        "patches": model.patches,
        "sigmas": getattr(ms, "sigmas", None),
        "options": model.model_options,
        "object_patches": sorted(model.object_patches),
        "wrappers": getattr(model, "wrappers", {}),
    })  # fmt: skip


def host_version() -> str:
    try:
        import comfyui_version

        return str(comfyui_version.__version__)
    except ImportError:  # a host without the version file
        return "unknown"


# -- writing ------------------------------------------------------------------------------------------------


def encoder_options(crf: int) -> dict:
    """imageio-ffmpeg settings of a segment: crf 0 is lossless RGB (libx264rgb; every frame exactly as
    computed, large files); above 0, H.264 4:2:0 at that crf, converted and tagged as BT.709 (what players
    assume for video)."""
    if crf == 0:
        return {"codec": "libx264rgb", "pix_fmt_out": "rgb24", "output_params": ["-qp", "0"]}
    return {
        "codec": "libx264",
        "pix_fmt_out": "yuv420p",
        "output_params": [
            "-crf", str(crf), "-vf", "scale=out_color_matrix=bt709:out_range=tv",
            "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
        ],
    }  # fmt: skip


class SegmentWriter:
    """8-bit frames to one segment file through ffmpeg (imageio-ffmpeg), under a .partial name until it is
    complete; a writer left unfinished (cancel, an error) removes its partial file."""

    def __init__(self, path: Path, hw: tuple[int, int], rate: Fraction, crf: int):
        self.path = path
        self.partial = path.with_name(path.stem + ".partial" + path.suffix)
        self.writer = imageio_ffmpeg.write_frames(
            str(self.partial), (hw[1], hw[0]), fps=rate, quality=None, macro_block_size=1,
            ffmpeg_log_level="error", **encoder_options(crf),
        )  # fmt: skip
        self.writer.send(None)

    def write(self, frames: torch.Tensor) -> None:
        """frames: [n, H, W, 3] in [0, 1], converted to uint8 a few at a time."""
        for i in range(0, frames.shape[0], WRITE_GROUP):
            for frame in to_uint8(frames[i : i + WRITE_GROUP]):
                self.writer.send(np.ascontiguousarray(frame))

    def finish(self) -> None:
        self.writer.close()
        self.writer = None
        os.replace(self.partial, self.path)

    def abandon(self) -> None:
        if self.writer is not None:
            self.writer.close()  # ffmpeg ends with the pipe; the partial file goes
            self.writer = None
        self.partial.unlink(missing_ok=True)


def frame_count(path: Path) -> int:
    """Frames in a video file by its header (mp4 records them), 0 when it cannot be read."""
    try:
        with av.open(str(path)) as container:
            return int(container.streams.video[0].frames)
    except (av.error.FFmpegError, IndexError):
        return 0


def save_atomic(path: Path, write) -> None:
    """Writes a file through `write(f)` under a temporary name and renames it: it exists whole or not at all."""
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def comment(key: str) -> str:
    return f"PatchVSR long video {key}"


def finished_key(path: Path) -> str | None:
    """The run key a finished output file was made under (its comment tag), or None."""
    try:
        with av.open(str(path)) as container:
            text = container.metadata.get("comment", "")
    except av.error.FFmpegError:
        return None
    return text.removeprefix(comment("")) if text.startswith(comment("")) else None


def assemble(segments: list[Path], source: Source, out: Path, key: str, layout: ChunkLayout) -> None:
    """The finished video from the segments, stream-copied (no re-encode) with the source's sound tracks
    (copied too; re-encoded to AAC only where the mp4 container cannot hold them), under a .partial name,
    checked (its frame count; a frame rate that differs is logged), then renamed to `out`."""
    work = segments[0].parent
    listing = work / "segments.ffconcat"
    escaped = [str(p).replace("'", "'\\''") for p in segments]
    listing.write_text("ffconcat version 1.0\n" + "".join(f"file '{p}'\n" for p in escaped))
    partial = out.with_name(out.name + ".partial")
    base = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "concat", "-safe", "0", "-i", str(listing)]
    base += ["-i", source.path, "-map", "0:v:0", "-map", "1:a?", "-c", "copy", "-metadata", f"comment={comment(key)}"]
    tail = ["-movflags", "+faststart", "-f", "mp4", str(partial)]
    result = subprocess.run(base + tail, capture_output=True, text=True)
    if result.returncode != 0 and source.audio:
        log.warning("PatchVSR long video: the sound could not be copied into mp4 (%s); re-encoding it as AAC",
                    result.stderr.strip()[-300:])  # fmt: skip
        result = subprocess.run(base + ["-c:a", "aac", "-b:a", "320k"] + tail, capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg could not join the segments in {work}: {result.stderr.strip()[-1000:]}")
    with av.open(str(partial)) as container:
        stream = container.streams.video[0]
        frames, rate = int(stream.frames), stream.average_rate
    if frames != layout.frames:
        raise RuntimeError(
            f"the joined video {partial} has {frames} frames, expected {layout.frames}; the segments in {work} "
            "are kept."
        )
    if rate is None or Fraction(rate) != source.frame_rate:
        # A variable-rate source is written at its average rate, which its container may round.
        log.warning("PatchVSR long video: %s plays at %s fps, the source at %s", out.name, rate, source.frame_rate)
    os.replace(partial, out)


def release_freed_memory() -> None:
    """Hands the C heap's free pages back to the system after a chunk (glibc's malloc_trim; nothing elsewhere).
    A chunk frees hundreds of MB of short-lived buffers of many sizes; without this the heap kept a few MB
    more after every chunk, so the peak crept up with the clip's length instead of staying one chunk's."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


# -- the run ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LongVideoSettings:
    """The node's widgets, grouped as the functions they go to take them."""

    plan: PlanSettings
    sampler: SamplerSettings
    context: ContextConfig
    encode_tile_px: int  # UpscaleEncode's tile_px
    decode: DecodeTiles
    overlap: int  # latent frames consecutive chunks share
    crf: int  # segment quality, 0 = lossless
    filename_prefix: str  # where the output goes, under ComfyUI's output folder


def output_paths(prefix: str, source: Source, key: str) -> tuple[Path, Path]:
    """(finished file, work folder) for a run, inside ComfyUI's output folder, or a ValueError."""
    root = Path(folder_paths.get_output_directory()).resolve()
    if not prefix.strip() or os.path.isabs(prefix):
        raise ValueError(
            f"filename_prefix: {prefix!r} must be a relative name under the output folder, e.g. 'PatchVSR/long'."
        )
    base = (root / prefix).resolve()
    if root not in base.parents:
        raise ValueError(f"filename_prefix: {prefix!r} leads outside the output folder; use e.g. 'PatchVSR/long'.")
    clip = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source.path).stem)[:60]
    name = f"{base.name}_{clip}_{key[:12]}"
    return base.parent / f"{name}.mp4", base.parent / f"{name}.work"


class Run:
    """One long-video run: its plans, identity, files and the loop over its chunks."""

    def __init__(self, video, model, vae, positive, negative, stitcher, adapter, settings: LongVideoSettings, node_id):
        s = settings
        # 1. Check inputs before any heavy work: the models, the file, the plan of every chunk, the tiles.
        self.family = model_family(model)
        check_vae(vae, self.family)
        check_conditioning(positive, "positive")
        check_conditioning(negative, "negative")
        check_tiles(s.decode, DECODE_PREFIX)
        self.source = open_source(video)
        window = s.plan.window_frames or self.family.native_frames
        message = frames_error("window_frames", window, f"the model's {self.family.native_frames}")
        if message:
            raise ValueError(message)
        if self.source.frames > window and max_overlap(window) == 0:
            raise ValueError(
                f"window_frames: chunks of {window} frame cannot share frames with the next; use 5 or more for a "
                f"clip of {self.source.frames} frames."
            )
        if self.source.frames > window and not 1 <= s.overlap <= max_overlap(window):
            raise ValueError(
                f"chunk_overlap: {s.overlap} latent frames in chunks of {window} frames; use 1 to "
                f"{max_overlap(window)} "
                "(a chunk must start after the previous one's held frames), or longer window_frames."
            )
        self.layout = chunk_layout(self.source.frames, window, s.overlap)
        lengths = {c.frames for c in self.layout.chunks}
        self.plans = {n: plan_video(self.family, self.source.lr_hw, n, s.plan) for n in lengths}
        self.stitch = stitcher if stitcher is not None else StitchConfig()
        self.video, self.model, self.vae, self.adapter = video, model, vae, adapter
        self.positive, self.negative, self.settings, self.node_id = positive, negative, s, node_id
        # 2. The identity of the frames this run makes, and where they go.
        self.identity = {
            "layout_version": LAYOUT_VERSION,
            "host": host_version(),
            "source": file_identity(self.source.path),
            "model": model_identity(model),
            "vae": fingerprint(weights_sample(vae.first_stage_model)),
            "positive": fingerprint(positive),
            "negative": fingerprint(negative),
            "stitcher": fingerprint(self.stitch),
            "adapter": None if adapter is None else fingerprint([adapter.name, weights_sample(adapter.patcher.model)]),
            "plan": dataclasses.asdict(s.plan),
            "sampler": dataclasses.asdict(s.sampler),
            "context": dataclasses.asdict(s.context),
            "encode_tile_px": s.encode_tile_px,
            "decode": dataclasses.asdict(s.decode),
            "layout": {"frames": self.layout.frames, "window": window, "overlap": self.layout.overlap},
            "crf": s.crf,
        }  # fmt: skip
        self.key = run_key(self.identity)
        self.out, self.work = output_paths(s.filename_prefix, self.source, self.key)

    def segment(self, k: int) -> Path:
        return self.work / f"seg_{k:05d}.mp4"

    def tail(self, k: int) -> Path:
        return self.work / f"tail_{k:05d}.npy"

    def finished_chunks(self) -> int:
        """Chunks already on disk from an earlier run of the same identity: the first missing one's index.
        A work folder of another identity under the same name (a hash prefix shared by chance) is replaced."""
        manifest = self.work / MANIFEST
        stored = json.loads(json.dumps(self.identity))  # as JSON gives it back (a tuple comes back a list)
        if manifest.exists() and json.loads(manifest.read_text()).get("identity") != stored:
            log.warning("PatchVSR long video: %s holds another run's chunks; starting over", self.work)
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        if not manifest.exists():
            body = {"key": self.key, "identity": self.identity, "output": self.out.name,
                    "chunks": [dataclasses.asdict(c) for c in self.layout.chunks]}  # fmt: skip
            save_atomic(manifest, lambda f: f.write(json.dumps(body, indent=1).encode()))
        done = 0
        for c in self.layout.chunks:
            if frame_count(self.segment(c.index)) != c.write_stop - c.start:
                break
            done += 1
        # The next chunk holds the last finished one's tail; without it that chunk is made again.
        if 0 < done < len(self.layout.chunks) and not self.tail(done - 1).exists():
            done -= 1
            if done > 0 and not self.tail(done - 1).exists():
                log.warning("PatchVSR long video: %s lacks the frames chunk %d holds; starting over", self.work, done)
                done = 0
        return done

    def patches(self, frames: int) -> int:
        """Patch evaluations of one chunk of `frames` frames, as the sampler's wrapper counts them."""
        schedule = FusionSchedule.build(self.plans[frames], self.stitch, None)
        return sum(schedule.patches_per_step(self.settings.sampler.steps))

    def say(self, text: str) -> None:
        """The chunk being worked on, in the node's text (ComfyUI's progress text, where the host has it)."""
        log.info("PatchVSR long video: %s", text)
        try:
            from server import PromptServer
        except ImportError:  # no server (a host run without one)
            return
        send = getattr(PromptServer.instance, "send_progress_text", None)
        if send is not None and self.node_id is not None:
            send(text, self.node_id)

    def __call__(self) -> tuple[Path, dict]:
        """Runs (or resumes) every chunk and joins them; returns the finished file and a report."""
        chunks = self.layout.chunks
        report = {"chunks": len(chunks), "frames": self.layout.frames, "file": self.out.name}
        report.update(computed=[], reused=[])
        if self.out.exists() and finished_key(self.out) == self.key:
            self.say(f"already finished: {self.out.name}")
            return self.out, {**report, "reused": list(range(len(chunks)))}
        # 3. Resume from the first missing chunk; one progress bar over every chunk's patch evaluations.
        first = self.finished_chunks()
        counts = [self.patches(c.frames) for c in chunks]
        progress = Progress(sum(counts))
        progress.set(sum(counts[:first]))
        if first:
            self.say(f"resuming at chunk {first + 1} of {len(chunks)} ({first} finished)")
        report["reused"] = list(range(first))
        for c in chunks[first:]:
            self.say(f"chunk {c.index + 1} of {len(chunks)}: frames {c.start + 1}-{min(c.stop, self.layout.frames)} "
                     f"of {self.layout.frames}")  # fmt: skip
            self.chunk(c, progress)
            release_freed_memory()
            progress.set(sum(counts[: c.index + 1]))
            report["computed"].append(c.index)
        # 4. Join the segments (stream copy), then drop what only a resume needed: the finished file holds it.
        assemble([self.segment(c.index) for c in chunks], self.source, self.out, self.key, self.layout)
        shutil.rmtree(self.work)
        self.say(f"finished: {self.out.name}")
        return self.out, report

    def chunk(self, c, progress: Progress) -> None:
        """Denoises, decodes and writes one chunk: its segment, and the tail the next chunk holds."""
        s = self.settings
        plan = self.plans[c.frames]
        # 1. Its LR frames, read from the file (the source's last frame repeated where the clip was padded).
        stop = min(c.stop, self.layout.frames)
        lr = pad_frames(read_frames(self.video, self.source, c.start, stop), c.frames)
        quiet = CancelOnly()
        latent = encode_upscaled(plan, self.vae, lr, s.encode_tile_px, quiet)
        seed = chunk_seed(s.sampler.seed, c.index)
        context = encode_context(plan, self.vae, s.context, seed, frames=lr)
        del lr  # the chunk's LR frames are encoded: free them before sampling
        # 2. The held frames: the previous chunk's output over the shared frames, encoded in this chunk's own
        #    causal context (its first latent frame is one pixel frame, as the chunk's start), replace the start
        #    latent there, and the noise mask keeps them (ComfyUI's masked sampling: noised to each step's
        #    level) while the rest of the chunk is denoised next to them.
        hold = previous = None
        if c.held:
            previous = torch.from_numpy(np.load(self.tail(c.index - 1))).float() / 255.0
            # The output-size frames through the same tiled encode: a plan whose input is already the target.
            g = dataclasses.replace(plan.geometry, lr_hw=plan.geometry.target_hw, frames=c.held)
            held = encode_upscaled(dataclasses.replace(plan, geometry=g), self.vae, previous, s.encode_tile_px, quiet)
            latent[:, :, : c.held_latent] = held  # this chunk's own start latent: no one else holds it
            hold = torch.ones(1, 1, *latent.shape[2:])
            hold[:, :, : c.held_latent] = 0.0
        settings = dataclasses.replace(s.sampler, seed=seed)
        out = sample(self.model, self.positive, self.negative, {"samples": latent}, plan, settings, context,
                     self.stitch, self.adapter, progress, hold)["samples"]  # fmt: skip
        del latent, context  # sampled: only the result is needed from here on
        # 3. Decode in temporal slices (decode_stream) and hand each slice's frames on at once: cross-fade the
        #    held frames from the previous chunk's pixels to this chunk's, keep the tail the next chunk holds,
        #    write the rest, so a chunk's decoded frames are never all in memory together.
        nxt = self.layout.chunks[c.index + 1] if c.index + 1 < len(self.layout.chunks) else None
        tail_from = nxt.start - c.start if nxt is not None else None  # chunk frames the next chunk holds
        write_stop = c.write_stop - c.start
        tail: list[np.ndarray] = []
        done = [0]  # chunk frames handed on so far
        writer = SegmentWriter(self.segment(c.index), plan.geometry.target_hw, self.source.frame_rate, s.crf)

        def take(frames: torch.Tensor) -> None:
            start, n = done[0], frames.shape[0]
            if previous is not None:
                frames = cross_fade(previous, frames, start)
            if tail_from is not None and start + n > tail_from:
                tail.append(to_uint8(frames[max(0, tail_from - start) :]))
            if start < write_stop:
                writer.write(frames[: write_stop - start])
            done[0] += n
            progress.check()

        try:
            decode_stream(self.vae, out, s.decode, take)
            writer.finish()
        finally:
            writer.abandon()
        del out
        if tail:
            frames_held = np.concatenate(tail)
            save_atomic(self.tail(c.index), lambda f: np.save(f, frames_held))
        if c.index > 0:
            self.tail(c.index - 1).unlink(missing_ok=True)  # held by this chunk, which is finished


class CancelOnly:
    """What encode_upscaled asks of a progress bar, for encodes inside a chunk: a cancel check per tile and no
    bar of its own (the node's one bar counts patch evaluations)."""

    done, total = 0, 1

    def set(self, value, total=None, preview=None) -> None:
        pass

    def check(self) -> None:
        # Cancel from the UI raises here; never catch it (it is an Exception on older hosts).
        comfy.model_management.throw_exception_if_processing_interrupted()


# -- the node -----------------------------------------------------------------------------------------------


def _inputs_of(node, names: tuple[str, ...]) -> list:
    """Another node's inputs by name (one owner of each widget's limits and tooltip)."""
    by_id = {i.id: i for i in node.define_schema().inputs}
    return [by_id[n] for n in names]


class LongVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        sampler_inputs = [i for i in _inputs_of(PatchSampler, SAMPLER_WIDGETS) if i.id != "seed"]
        return io.Schema(
            node_id="PatchVSR_LongVideo",
            display_name="PatchVSR Long Video",
            category=CATEGORY,
            description="Upscales a whole video file chunk by chunk (one temporal window of the model each), "
            "writing finished chunks to disk: memory is set by one chunk, not by the clip; a cancelled or crashed "
            "run resumes from its first missing chunk when queued again. Keeps the frame rate and the sound.",
            is_output_node=True,
            inputs=[
                io.Video.Input("video", tooltip="The clip, from core Load Video (read from its file chunk by chunk)."),
                io.Model.Input("model", tooltip="The Wan T2V model. It is cloned, never changed."),
                io.Vae.Input("vae", tooltip="The Wan VAE of the model family."),
                io.Conditioning.Input("positive", tooltip="Text conditioning describing the clip."),
                io.Conditioning.Input("negative", tooltip="Negative text conditioning (used when cfg > 1)."),
                StitcherType.Input(
                    "stitcher",
                    optional=True,
                    tooltip="Optional PatchVSR Latent Stitcher; unconnected: the shifted stitch.",
                ),
                AdapterType.Input(
                    "adapter", optional=True, tooltip="Optional trained PatchVSR adapter from the Adapter Loader."
                ),
                *_inputs_of(PatchPartitioner, PLAN_WIDGETS),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    # Said outright: newer frontends (1.5x) give an INT named seed a "randomize after each run"
                    # control unless told otherwise, which would start a new run instead of resuming this one.
                    control_after_generate=False,
                    tooltip="Noise seed (chunk k uses seed + k). It stays fixed: a run queued again with the same "
                    "seed resumes.",
                ),
                *sampler_inputs,
                *_inputs_of(GlobalContextEncoder, CONTEXT_WIDGETS),
                io.Int.Input(
                    "encode_tile_px",
                    default=512,
                    min=64,
                    max=4096,
                    step=16,
                    tooltip="Encode tile size in output pixels (PatchVSR Upscale & Encode's tile_px); smaller uses "
                    "less memory.",
                ),
                io.Int.Input(
                    "decode_tile_px",
                    default=512,
                    min=64,
                    max=4096,
                    step=32,
                    tooltip="Decode tile size in output pixels.",
                ),
                io.Int.Input(
                    "decode_overlap_px",
                    default=64,
                    min=0,
                    max=2048,
                    step=32,
                    tooltip="Overlap between decode tiles in pixels, blended linearly. Up to half of decode_tile_px, "
                    "used as set (ComfyUI's VAE Decode (Tiled) lowers one above a quarter of the tile to a quarter).",
                ),
                io.Int.Input(
                    "decode_temporal_frames",
                    default=32,
                    min=8,
                    max=4096,
                    step=4,
                    tooltip="Pixel frames decoded at a time: the RAM peak of a chunk's decode grows with it (at 4K "
                    "about 0.4 GB per frame); each slice's frames are written before the next is decoded.",
                ),
                io.Int.Input(
                    "decode_temporal_overlap",
                    default=8,
                    min=4,
                    max=4096,
                    step=4,
                    tooltip="Pixel frames shared by consecutive temporal decode tiles.",
                ),
                io.Int.Input(
                    "chunk_overlap",
                    default=3,
                    min=1,
                    max=64,
                    tooltip="Latent frames consecutive chunks share (4 x overlap - 3 pixel frames: 3 = 9 frames): the "
                    "new chunk holds them to the previous chunk's result and cross-fades them. More is smoother "
                    "and costs overlap / window of every chunk again.",
                ),
                io.Int.Input(
                    "crf",
                    default=16,
                    min=0,
                    max=51,
                    tooltip="H.264 quality of the written video: 0 = lossless RGB (exact frames, large files); 16 is "
                    "visually lossless; higher is smaller.",
                ),
                io.String.Input(
                    "filename_prefix",
                    default="PatchVSR/long",
                    tooltip="Where the video goes in the output folder; its work folder (finished chunks, for "
                    "resuming) sits beside it until it is complete.",
                ),
            ],
            outputs=[
                io.Video.Output(display_name="video", tooltip="The finished video file (for Save Video or a preview).")
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, target=None, window_frames=None, sampler_name=None, scheduler=None, lora_name=None,
                        chunk_overlap=None):  # fmt: skip
        # Every input named here skips the host's own min/max check: widget_errors makes it from the schema.
        checked = widget_errors(cls, target=target, window_frames=window_frames, sampler_name=sampler_name,
                                scheduler=scheduler, lora_name=lora_name, chunk_overlap=chunk_overlap)  # fmt: skip
        if checked is not True:
            return checked
        if isinstance(window_frames, int):
            message = frames_error("window_frames", window_frames, "the model's native length")
            if message:
                return message
            limit = max_overlap(window_frames)
            if limit and isinstance(chunk_overlap, int) and chunk_overlap > limit:
                return (
                    f"chunk_overlap: {chunk_overlap} latent frames in chunks of {window_frames} frames; use 1 to "
                    f"{max_overlap(window_frames)}, or longer window_frames."
                )
        return True

    @classmethod
    def execute(cls, video, model, vae, positive, negative, stitcher=None, adapter=None, **widgets) -> io.NodeOutput:
        w = widgets
        settings = LongVideoSettings(
            plan=PlanSettings(**{n: w[n] for n in PLAN_WIDGETS}),
            sampler=SamplerSettings(**{n: w[n] for n in SAMPLER_WIDGETS}),
            context=ContextConfig(w["strength"], w["noise_t"], with_adapter=w.get("anchor_with_adapter", False)),
            encode_tile_px=w["encode_tile_px"],
            decode=DecodeTiles(*(w[DECODE_PREFIX + f.name] for f in dataclasses.fields(DecodeTiles))),
            overlap=w["chunk_overlap"],
            crf=w["crf"],
            filename_prefix=w["filename_prefix"],
        )
        run = Run(video, model, vae, positive, negative, stitcher, adapter, settings, cls.hidden.unique_id)
        path, report = run()
        root = Path(folder_paths.get_output_directory()).resolve()
        rel = path.parent.relative_to(root)
        subfolder = "" if rel == Path(".") else str(rel)
        text = (f"{report['frames']} frames in {report['chunks']} chunks ({len(report['computed'])} computed, "
                f"{len(report['reused'])} reused): {Path(subfolder) / path.name}")  # fmt: skip
        # Text, not a video preview: Save Video or a preview node connected to the output shows the video.
        return io.NodeOutput(InputImpl.VideoFromFile(str(path)), ui={"text": [text], "patchvsr_long_video": [report]})
