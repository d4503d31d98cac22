"""Reading back the videos the server saved."""

from __future__ import annotations

from pathlib import Path


def video_size(path: Path) -> tuple[int, int, int]:
    """(width, height, frames) of an mp4, read with imageio-ffmpeg."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    frames = sum(1 for _ in reader)
    return meta["size"][0], meta["size"][1], frames
