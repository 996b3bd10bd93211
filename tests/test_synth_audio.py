"""`vcache synth --audio`: each digit's tone sounds while the digit is shown, silence in the gap, and the
pixels are those of the same dataset without audio."""

from __future__ import annotations

import json
from pathlib import Path

import decord
import numpy as np
import pytest
from typer.testing import CliRunner

from vcache.cli.app import app
from vcache.data.audio import AudioConfig, band_centres, clip_spectrogram, has_audio
from vcache.data.synth import background_pool, class_list, render_video
from vcache.data.synth_audio import SILENT, TONES, frame_digits

FRAMES, FPS, GAP = 50, 25, 10  # 2 s: digit A in frames 0-19, blank 20-29, digit B 30-49
CFG = AudioConfig()


def synth(out: Path, *extra: str) -> None:
    args = ["synth", str(out), "--train", "3", "--test", "0", "--task", "order", "--frames", str(FRAMES)]
    res = CliRunner().invoke(app, [*args, "--fps", str(FPS), "--gap", str(GAP), "--seed", "4", "-q", *extra])
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("synth_audio")
    synth(root / "mute")
    synth(root / "audio", "--audio")
    return root / "mute", root / "audio"


def videos(out: Path) -> list[Path]:
    return sorted((out / "videos").glob("*/*.mp4"))


def test_frame_digits_reads_the_digit_each_rendered_frame_shows() -> None:
    cls = class_list("order")[0]
    rng = np.random.default_rng(0)
    video = render_video(cls, rng, FRAMES, 64, background_pool(0, 64), gap=GAP)
    a, b = cls.digits[0], cls.digits[-1]
    expected = np.array([a] * 20 + [SILENT] * 10 + [b] * 20)
    np.testing.assert_array_equal(frame_digits(video), expected)


def test_audio_videos_keep_the_pixels_and_the_metadata_records_the_track(pair) -> None:
    mute, audio = pair
    assert [p.relative_to(mute) for p in videos(mute)] == [p.relative_to(audio) for p in videos(audio)]
    for m, a in zip(videos(mute), videos(audio), strict=True):
        assert not has_audio(str(m)) and has_audio(str(a))
        fm, fa = decord.VideoReader(str(m)), decord.VideoReader(str(a))
        assert len(fm) == len(fa) == FRAMES
        np.testing.assert_array_equal(fm.get_batch(list(range(FRAMES))).asnumpy(), fa[:].asnumpy())
    settings = json.loads((audio / "classes.json").read_text())["settings"]
    assert settings["audio"]["tones_hz"] == {str(d): f for d, f in TONES.items()}
    assert "audio" not in json.loads((mute / "classes.json").read_text())["settings"]


def test_each_digit_sounds_while_it_is_shown_and_the_gap_is_silent(pair) -> None:
    _, audio = pair
    meta = {c["name"]: c["digits"] for c in json.loads((audio / "classes.json").read_text())["classes"]}
    centres = band_centres(CFG)
    per_s = (CFG.shape()[1] - 1) / CFG.seconds  # spectrogram frames per second (200)
    for path in videos(audio):
        a, b = meta[path.parent.name]
        first = clip_spectrogram(str(path), 0.0)  # A for 0-0.8 s, then the gap
        second = clip_spectrogram(str(path), 1.0)  # the gap for 0-0.2 s, then B
        hz_first = centres[first.argmax(axis=0)]
        hz_second = centres[second.argmax(axis=0)]
        assert np.all(np.abs(hz_first[: int(0.8 * per_s) - 3] - TONES[a]) < 30)
        assert np.all(np.abs(hz_second[int(0.2 * per_s) + 3 :] - TONES[b]) < 30)
        band_a = int(np.argmin(np.abs(centres - TONES[a])))
        loud = first[band_a, : int(0.8 * per_s) - 3].min()
        gap = np.concatenate([first[band_a, int(0.8 * per_s) + 3 :], second[band_a, : int(0.2 * per_s) - 3]])
        assert gap.max() < loud - 5  # the tone of A is gone while nothing is shown
