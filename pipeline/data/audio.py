"""The audio of a clip as STiCA's audio encoder sees it: a log-mel spectrogram of the 1-second window that
starts with the visual clip, decoded with PyAV.

What follows the paper (STiCA, appendix "Implementation details"): 1 second of audio starting at the same
time as the visual clip, a log-mel spectrogram of 257 x 199, volume jittering as the audio augmentation.
What follows the official code (GDT/STiCA ``datasets/audio_utils.py``, the paper is silent): mono audio at
24 kHz, ``python_speech_features.logfbank`` conventions (pre-emphasis 0.97, rectangular window, power
spectrum |FFT|^2 / n_fft over 1024 points, 257 triangular mel filters over 0 .. sr/2 on the HTK mel scale,
natural log, energies floored at machine epsilon), volume jitter a uniform gain in [0.9, 1.1] on the
waveform, and a window that would run past the end of the track is moved back to end there.

Chosen here: the official code uses a 20 ms window with a 10 ms hop, which gives 257 x 99 for 1 s (its
257 x 199 is the shape of 2 s). We keep the paper's 1 s *and* its 257 x 199 by halving both: a 10 ms window
(240 samples) with a 5 ms hop (120 samples): 1 + ceil((24000 - 240) / 120) = 199 frames. Both are settings
of :class:`AudioConfig`. A track shorter than the window is zero-padded at the end. The jitter gain is drawn
once per video by the caller (:func:`volume_gain`) and applied to every clip of that video.

A video without an audio stream gives ``None`` from :func:`clip_audio` and :func:`clip_spectrogram`; the
caller skips it and counts it. A silent (all-zero) track is a valid input: every energy is at the floor, so
the spectrogram is the constant log(eps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "AudioConfig",
    "band_centres",
    "clip_audio",
    "clip_spectrogram",
    "has_audio",
    "log_mel",
    "mel_filterbank",
    "volume_gain",
]

EPS = float(np.finfo(float).eps)  # logfbank's floor for zero energies


@dataclass(frozen=True)
class AudioConfig:
    sample_rate: int = 24000  # GDT/STiCA code default (aud_sample_rate)
    seconds: float = 1.0  # paper: 1 second starting with the visual clip
    n_fft: int = 1024  # official code
    n_mels: int = 257  # paper: 257 rows
    win_s: float = 0.010  # chosen: gives the paper's 199 frames for 1 s (official code: 0.020)
    hop_s: float = 0.005  # chosen: (official code: 0.010)
    preemph: float = 0.97  # logfbank default, as the official code calls it
    jitter: tuple[float, float] = (0.9, 1.1)  # official code: volume gain range

    @property
    def samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    @property
    def win(self) -> int:
        return int(round(self.win_s * self.sample_rate))

    @property
    def hop(self) -> int:
        return int(round(self.hop_s * self.sample_rate))

    def frames(self, n_samples: int | None = None) -> int:
        n = self.samples if n_samples is None else n_samples
        return 1 if n <= self.win else 1 + math.ceil((n - self.win) / self.hop)

    def shape(self) -> tuple[int, int]:
        """(mel bands, frames) of one window: (257, 199) by default."""
        return self.n_mels, self.frames()


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, edges evenly spaced on the mel scale over 0 .. sr/2 and
    snapped down to FFT bins (logfbank's construction). Also gives :func:`band_centres`."""
    edges = _mel_to_hz(np.linspace(0.0, float(_hz_to_mel(sample_rate / 2)), n_mels + 2))
    bins = np.floor((n_fft + 1) * edges / sample_rate).astype(int)
    fb = np.zeros((n_mels, n_fft // 2 + 1))
    for j in range(n_mels):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        for i in range(lo, mid):
            fb[j, i] = (i - lo) / (mid - lo)
        for i in range(mid, hi):
            fb[j, i] = (hi - i) / (hi - mid)
    fb.setflags(write=False)
    return fb


def band_centres(cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """Centre frequency (Hz) of each mel band: the peak bin of its triangle."""
    fb = mel_filterbank(cfg.n_mels, cfg.n_fft, cfg.sample_rate)
    return np.argmax(fb, axis=1) * cfg.sample_rate / cfg.n_fft


def log_mel(wav: np.ndarray, cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """(n_mels, frames) float32 log-mel energies of a mono waveform (float, any scale)."""
    x = np.asarray(wav, dtype=np.float64).reshape(-1)
    x = np.append(x[:1], x[1:] - cfg.preemph * x[:-1]) if x.size else x
    n_frames = cfg.frames(x.size)
    need = cfg.win + (n_frames - 1) * cfg.hop
    x = np.pad(x, (0, max(0, need - x.size)))
    idx = np.arange(cfg.win)[None, :] + cfg.hop * np.arange(n_frames)[:, None]
    frames = x[idx]  # (frames, win), rectangular window
    power = np.abs(np.fft.rfft(frames, n=cfg.n_fft, axis=1)) ** 2 / cfg.n_fft
    energy = power @ mel_filterbank(cfg.n_mels, cfg.n_fft, cfg.sample_rate).T
    return np.log(np.maximum(energy, EPS)).T.astype(np.float32)


def volume_gain(rng: np.random.Generator, cfg: AudioConfig = AudioConfig()) -> float:
    """One volume-jitter gain, drawn once per video (uniform in ``cfg.jitter``)."""
    return float(rng.uniform(*cfg.jitter))


def has_audio(path: str) -> bool:
    import av

    with av.open(str(path)) as container:
        return bool(container.streams.audio)


def _decode_mono(
    path: str, sample_rate: int, start_s: float, stop_s: float
) -> tuple[np.ndarray, float] | None:
    """Mono float32 samples at `sample_rate` covering at least [start_s, stop_s) where the track has them,
    and the time (s) of the first one; None without an audio stream."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        end = None  # the track's declared end: the encoder's trailing padding is not audio
        if stream.duration is not None and stream.time_base is not None:
            end = float((stream.start_time or 0) * stream.time_base + stream.duration * stream.time_base)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        first: float | None = None
        got = 0
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                if first is None:
                    first = float(out.pts * out.time_base) if out.pts is not None else 0.0
                chunks.append(out.to_ndarray().reshape(-1))
                got += out.samples
            if first is not None and first + got / sample_rate >= stop_s:
                break
        for out in resampler.resample(None):
            if first is None:
                first = 0.0
            chunks.append(out.to_ndarray().reshape(-1))
    wav = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    first = first or 0.0
    if end is not None:
        wav = wav[: max(0, int(round((end - first) * sample_rate)))]
    return wav, first


def clip_audio(path: str, start_s: float, cfg: AudioConfig = AudioConfig()) -> np.ndarray | None:
    """The ``cfg.seconds`` of mono audio at ``cfg.sample_rate`` starting at ``start_s`` (the visual clip's
    first frame time): float32 (cfg.samples,). A window past the end of the track is moved back to end
    there (as the official code); a track shorter than the window is zero-padded. None without audio."""
    windows = clip_audios(path, [start_s], cfg)
    return None if windows is None else windows[0]


def clip_audios(path: str, starts_s, cfg: AudioConfig = AudioConfig()) -> list[np.ndarray] | None:
    """`clip_audio` for each start of one video, decoding its track once (up to the last window's end)
    instead of once per window. None without audio."""
    starts_s = [float(t) for t in starts_s]
    if not starts_s:
        return [] if has_audio(path) else None
    decoded = _decode_mono(path, cfg.sample_rate, min(starts_s), max(starts_s) + cfg.seconds)
    if decoded is None:
        return None
    wav, t0 = decoded
    n = cfg.samples
    out = []
    for start_s in starts_s:
        lo = max(0, int(round((start_s - t0) * cfg.sample_rate)))
        lo = max(0, min(lo, wav.size - n))
        window = wav[lo : lo + n]
        out.append(np.pad(window, (0, n - window.size)).astype(np.float32))
    return out


def clip_spectrogram(
    path: str, start_s: float, gain: float = 1.0, cfg: AudioConfig = AudioConfig()
) -> np.ndarray | None:
    """(n_mels, frames) log-mel of the clip's audio window with volume gain `gain`; None without audio."""
    wav = clip_audio(path, start_s, cfg)
    return None if wav is None else log_mel(wav * gain, cfg)
