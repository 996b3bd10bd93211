"""An audio track for the synthetic videos whose events carry the class in step with the picture.

Chosen here (the STiCA paper trains on Kinetics' natural sound; this data set has none): each digit has
its own pure tone (:data:`TONES`), sounding exactly while that digit is on screen; blank frames (the
`gap` of the order family) are silent. A little seeded white noise keeps the track from being exactly
periodic. The appearance family then hears one tone, the order family two tones in the order of the
events, the motion family the tone of its moving digit. Audio is AAC, mono, at :data:`SAMPLE_RATE`.

`vcache synth --audio` writes the videos as without it, then :func:`add_audio` reads which digit each
decoded frame shows (the colour of its saturated pixels: every digit has its own colour, the background is
grey) and remuxes the file with the tone track, copying the video packets: the pixels are those of the
same dataset without audio. (Deriving the track from the shown frames keeps `vcache.data.synth` untouched.)
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from vcache.data.synth import COLOURS
from vcache.data.synth_io import add_h264_stream

__all__ = ["SAMPLE_RATE", "TONES", "add_audio", "frame_digits", "tone_track", "write_mp4_with_audio"]

SAMPLE_RATE = 24000  # the rate STiCA's spectrogram uses (vcache.data.audio.AudioConfig)
# Tones per digit (Hz), chosen well apart on the mel scale (>= 0.5 octave between neighbours).
TONES: dict[int, float] = {0: 440.0, 1: 700.0, 2: 1100.0, 3: 1750.0, 4: 2800.0}
AMPLITUDE = 0.5
NOISE = 0.01
SILENT = -1  # digit code of a blank frame
SATURATION = 100  # max - min channel (0..255) above which a pixel is sprite colour; the grey stays < 30
MIN_PIXELS = 20  # fewer saturated pixels than this: no digit shown


def tone_track(
    digit_of_frame: np.ndarray, fps: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """float32 mono samples in [-1, 1] covering the frames: frame t spans [t / fps, (t + 1) / fps) and
    sounds TONES[digit] (or nothing for SILENT). The phase runs on across frames of the same tone."""
    digits = np.asarray(digit_of_frame)
    n = int(round(len(digits) * sample_rate / fps))
    t = np.arange(n) / sample_rate
    frame = np.minimum((t * fps).astype(int), len(digits) - 1)
    d = digits[frame]
    freq = np.array([TONES.get(int(k), 0.0) for k in range(max(TONES) + 1)] + [0.0])[d]  # -1 -> 0 Hz
    wav = np.where(d == SILENT, 0.0, AMPLITUDE * np.sin(2 * np.pi * freq * t))
    wav += NOISE * rng.standard_normal(n)
    return np.clip(wav, -1.0, 1.0).astype(np.float32)


def write_mp4_with_audio(
    path: Path,
    video: np.ndarray,
    fps: int,
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    crf: int = 20,
    intra: bool = True,
) -> None:
    """As `vcache.data.synth.write_mp4` (same H.264 settings), plus a mono AAC track of `audio`."""
    import av

    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        vs = add_h264_stream(container, video, fps, crf, intra)
        aus = container.add_stream("aac", rate=sample_rate, layout="mono")
        _encode_audio(container, aus, audio, sample_rate)
        for image in video:
            for packet in vs.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
    tmp.replace(path)


def frame_digits(frames: np.ndarray) -> np.ndarray:
    """(T,) digit shown in each (T, H, W, 3) uint8 RGB frame, SILENT where none: the digit whose colour is
    nearest to the median of the frame's saturated pixels."""
    digits = sorted(COLOURS)
    palette = np.array([COLOURS[d] for d in digits]) * 255.0
    out = np.full(len(frames), SILENT)
    for t, frame in enumerate(np.asarray(frames, dtype=np.int16)):
        sat = frame.max(axis=-1) - frame.min(axis=-1) > SATURATION
        if sat.sum() >= MIN_PIXELS:
            colour = np.median(frame[sat], axis=0)
            out[t] = digits[int(np.argmin(((palette - colour) ** 2).sum(axis=1)))]
    return out


def _remux_with_audio(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Rewrite `path` with its video packets copied and `audio` added as a mono AAC track."""
    import av

    tmp = path.with_name(path.name + ".part")
    with av.open(str(path)) as src, av.open(str(tmp), mode="w", format="mp4") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        aus = dst.add_stream("aac", rate=sample_rate, layout="mono")
        _encode_audio(dst, aus, audio, sample_rate)
        for packet in src.demux(vin):
            if packet.dts is None:  # the demuxer's flush packet
                continue
            packet.stream = vout
            dst.mux(packet)
    tmp.replace(path)


def _encode_audio(container, stream, audio: np.ndarray, sample_rate: int) -> None:
    import av

    chunk = 1024
    for start in range(0, len(audio), chunk):
        block = np.ascontiguousarray(audio[start : start + chunk], dtype=np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(block, format="flt", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def add_audio(out: Path, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> int:
    """Give every video of the synthetic dataset in `out` its tone track (see the module docstring) and
    record the audio settings in classes.json. The noise of video `rel` is seeded with (seed, crc32(rel)).
    Returns the number of videos."""
    import av

    out = Path(out)
    videos = sorted((out / "videos").glob("*/*.mp4"))
    for path in videos:
        with av.open(str(path)) as src:
            stream = src.streams.video[0]
            fps = float(stream.average_rate)
            frames = np.stack([f.to_ndarray(format="rgb24") for f in src.decode(stream)])
        rel = path.relative_to(out / "videos").as_posix()
        rng = np.random.default_rng([seed, zlib.crc32(rel.encode())])
        _remux_with_audio(path, tone_track(frame_digits(frames), fps, rng, sample_rate), sample_rate)
    meta_path = out / "classes.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        meta.setdefault("settings", {})["audio"] = {
            "codec": "aac",
            "sample_rate": sample_rate,
            "tones_hz": {str(d): f for d, f in TONES.items()},
            "amplitude": AMPLITUDE,
            "noise_std": NOISE,
            "seed": seed,
        }
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return len(videos)
