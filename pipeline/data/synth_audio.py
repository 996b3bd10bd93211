"""An audio track for the synthetic videos whose events carry the class in step with the picture.

Chosen here (the STiCA paper trains on Kinetics' natural sound; this data set has none): each digit has
its own pure tone (:data:`TONES`), sounding exactly while that digit is on screen; blank frames (the
`gap` of the order family) are silent. A little seeded white noise keeps the track from being exactly
periodic. The appearance family then hears one tone, the order family two tones in the order of the
events, the motion family the tone of its moving digit. Audio is AAC, mono, at :data:`SAMPLE_RATE`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["SAMPLE_RATE", "TONES", "tone_track", "write_mp4_with_audio"]

SAMPLE_RATE = 24000  # the rate STiCA's spectrogram uses (vcache.data.audio.AudioConfig)
# Tones per digit (Hz), chosen well apart on the mel scale (>= 0.5 octave between neighbours).
TONES: dict[int, float] = {0: 440.0, 1: 700.0, 2: 1100.0, 3: 1750.0, 4: 2800.0}
AMPLITUDE = 0.5
NOISE = 0.01
SILENT = -1  # digit code of a blank frame


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
        vs = container.add_stream("libx264", rate=fps)
        vs.width, vs.height = video.shape[2], video.shape[1]
        vs.pix_fmt = "yuv420p"
        options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
        if intra:
            options["g"] = "1"
        vs.options = options
        aus = container.add_stream("aac", rate=sample_rate, layout="mono")
        chunk = 1024
        for start in range(0, len(audio), chunk):
            block = np.ascontiguousarray(audio[start : start + chunk], dtype=np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(block, format="flt", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            for packet in aus.encode(frame):
                container.mux(packet)
        for packet in aus.encode():
            container.mux(packet)
        for image in video:
            for packet in vs.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
    tmp.replace(path)
