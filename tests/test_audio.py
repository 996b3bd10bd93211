"""Clip audio for STiCA (vcache.data.audio): the log-mel shape, a tone's peak band, volume jitter, tracks
decoded with PyAV from real mp4 files (timing, the end of the track, silence, no audio stream)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vcache.data.audio import (
    EPS,
    AudioConfig,
    band_centres,
    clip_audio,
    clip_audios,
    clip_spectrogram,
    has_audio,
    log_mel,
    volume_gain,
)
from vcache.data.synth import write_mp4
from vcache.data.synth_audio import SAMPLE_RATE, TONES, tone_track, write_mp4_with_audio

CFG = AudioConfig()
FPS = 25


def tone(freq: float, seconds: float = 1.0, sr: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(spec: np.ndarray) -> np.ndarray:
    """Centre frequency of the loudest band, per frame."""
    return band_centres(CFG)[spec.argmax(axis=0)]


def test_default_shape_is_the_papers_257_by_199_for_one_second() -> None:
    assert CFG.shape() == (257, 199)
    assert log_mel(tone(1000.0), CFG).shape == (257, 199)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0, 7000.0])
def test_a_tone_peaks_in_the_band_centred_nearest_to_it(freq: float) -> None:
    spec = log_mel(tone(freq), CFG)
    centres = band_centres(CFG)
    nearest = np.abs(centres - freq).min()
    # every frame's loudest band is one of those centred closest to the tone (FFT bins are 23.4 Hz apart)
    assert np.all(np.abs(peak_hz(spec) - freq) <= nearest + CFG.sample_rate / CFG.n_fft)


def test_volume_jitter_scales_the_power_so_it_shifts_the_log_mel_by_2_log_gain() -> None:
    x = tone(1000.0)
    base = log_mel(x, CFG)
    for gain in (0.9, 1.1):
        shifted = log_mel(x * gain, CFG)
        loud = base > np.log(EPS) + 20  # bands well above the floor
        assert loud.sum() > 1000
        np.testing.assert_allclose((shifted - base)[loud], 2 * np.log(gain), atol=1e-3)
    gains = [volume_gain(np.random.default_rng(s), CFG) for s in range(200)]
    assert 0.9 <= min(gains) < 0.92 and 1.08 < max(gains) <= 1.1
    assert volume_gain(np.random.default_rng(7)) == volume_gain(np.random.default_rng(7))


@pytest.fixture(scope="module")
def av_file(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """3 s: digit 0 for 1 s, 0.2 s blank, digit 3 for 0.8 s, digit 4 for 1 s; AAC in an mp4 with video."""
    digits = np.array([0] * 25 + [-1] * 5 + [3] * 20 + [4] * 25)
    wav = tone_track(digits, FPS, np.random.default_rng(0))
    path = tmp_path_factory.mktemp("audio") / "tones.mp4"
    write_mp4_with_audio(path, np.zeros((len(digits), 32, 32, 3), np.uint8), FPS, wav)
    return path, wav


def test_decoded_window_starts_with_the_clip_and_matches_the_written_samples(av_file) -> None:
    path, wav = av_file
    for start in (0.0, 0.52, 1.0):
        got = clip_audio(str(path), start, CFG)
        assert got.shape == (SAMPLE_RATE,)
        lo = int(round(start * SAMPLE_RATE))
        ref = wav[lo : lo + SAMPLE_RATE]
        # AAC is lossy; a shift of even 1 sample of a 440-2800 Hz tone would give a far larger error
        assert np.corrcoef(got, ref)[0, 1] > 0.95


def test_the_tone_of_each_digit_sounds_while_the_digit_is_shown(av_file) -> None:
    path, _ = av_file
    assert np.all(peak_hz(clip_spectrogram(str(path), 0.0)) == pytest.approx(TONES[0], abs=12))
    spec = clip_spectrogram(str(path), 1.6)  # 0.4 s of digit 3, then 0.6 s of digit 4
    hz = peak_hz(spec)
    frames_per_s = (CFG.shape()[1] - 1) / CFG.seconds
    first, last = hz[: int(0.4 * frames_per_s) - 2], hz[int(0.4 * frames_per_s) + 2 :]
    assert np.all(np.abs(first - TONES[3]) < 30) and np.all(np.abs(last - TONES[4]) < 30)
    band = int(np.argmin(np.abs(band_centres(CFG) - TONES[0])))
    blank = clip_spectrogram(str(path), 1.0)[band, 2:36]  # 1.0-1.2 s: the gap, noise only
    assert blank.max() < clip_spectrogram(str(path), 0.0)[band].min() - 5


def test_a_window_past_the_end_is_moved_back_to_end_there(av_file) -> None:
    path, _ = av_file
    np.testing.assert_array_equal(clip_audio(str(path), 2.7, CFG), clip_audio(str(path), 2.0, CFG))


def test_many_windows_from_one_decode_equal_one_decode_per_window(av_file) -> None:
    """`extract --audio-backbone` decodes a video's track once for all its rows: the windows are the same
    as decoding up to each window's end on its own (the track's end included)."""
    path, _ = av_file
    starts = [1.6, 0.0, 0.52, 2.7, 1.0]
    many = clip_audios(str(path), starts, CFG)
    assert len(many) == len(starts)
    for t, w in zip(starts, many, strict=True):
        np.testing.assert_array_equal(w, clip_audio(str(path), t, CFG))
    assert not np.array_equal(many[0], many[1])


def test_a_video_without_audio_gives_none_and_a_silent_track_the_floor(tmp_path: Path) -> None:
    frames = np.zeros((10, 32, 32, 3), np.uint8)
    mute = tmp_path / "mute.mp4"
    write_mp4(mute, frames, FPS)
    assert not has_audio(str(mute))
    assert clip_audio(str(mute), 0.0) is None and clip_spectrogram(str(mute), 0.0, gain=1.1) is None
    assert clip_audios(str(mute), [0.0, 0.5]) is None
    silent = tmp_path / "silent.mp4"
    write_mp4_with_audio(silent, frames, FPS, np.zeros(SAMPLE_RATE // 2, np.float32))
    assert has_audio(str(silent))
    spec = clip_spectrogram(str(silent), 0.0)
    assert spec.shape == (257, 199)  # 0.4 s of track, zero-padded to the 1-s window
    assert spec.max() <= np.log(EPS) + 1.0
