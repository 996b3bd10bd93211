import numpy as np
import pytest

from vcache.data.crops import CropSettings, cut, decode_size, parse_layout, resize_matrix, sample_crops

TRAIN = CropSettings(mode="train", clip_frames=8, frame_stride=2, input_size=32, resize_short=37)


def test_train_crops_are_deterministic_and_follow_the_box_conventions():
    a = sample_crops(TRAIN, "x/v.mp4", 100, 48, 64)
    b = sample_crops(TRAIN, "x/v.mp4", 100, 48, 64)
    c = sample_crops(TRAIN, "x/other.mp4", 100, 48, 64)
    assert len(a) == 16
    assert all(np.array_equal(p.box, q.box) and p.flip == q.flip for p, q in zip(a, b, strict=True))
    assert not all(np.array_equal(p.box, q.box) for p, q in zip(a, c, strict=True))
    for crop in a:
        t0, t1, y0, x0, y1, x1 = crop.box
        assert 0 <= t0 < t1 <= 1 and 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1
        assert np.all(np.diff(crop.frames) == 2)
        assert t0 == pytest.approx(crop.frames[0] / 100)
        assert t1 == pytest.approx((crop.frames[-1] + 1) / 100)  # end exclusive
        area = (y1 - y0) * (x1 - x0)
        assert 0.3 - 1e-6 <= area <= 1 + 1e-6
    assert any(c.flip for c in a) and not all(c.flip for c in a)


def test_no_flip_and_seed():
    s = CropSettings(**{**TRAIN.__dict__, "flip": False})
    assert not any(c.flip for c in sample_crops(s, "v", 100, 48, 64))
    s2 = CropSettings(**{**TRAIN.__dict__, "seed": 1})
    assert not np.array_equal(
        sample_crops(s2, "v", 100, 48, 64)[0].box, sample_crops(TRAIN, "v", 100, 48, 64)[0].box
    )


def test_short_video_clamps_to_the_last_frame():
    crops = sample_crops(TRAIN, "v", 5, 48, 64)
    for c in crops:
        assert c.frames.max() == 4 and c.frames.min() == 0
        assert c.box[0] == 0 and c.box[1] == 1


@pytest.mark.parametrize("layout,n", [("5x3", 15), ("2x3", 6), ("10x1", 10)])
def test_eval_layouts(layout, n):
    s = CropSettings(
        mode="eval", clip_frames=8, frame_stride=2, input_size=32, resize_short=37, layout=layout
    )
    crops = sample_crops(s, "v", 200, 48, 64)
    assert len(crops) == n == s.k
    starts = sorted({int(c.frames[0]) for c in crops})
    assert starts[0] == 0 and starts[-1] == 200 - 15  # uniformly spaced, last clip ends at the video end
    if layout.endswith("x3"):  # left / centre / right, full short side
        xs = sorted({round(float(c.box[3]), 4) for c in crops})
        assert xs == [0.0, 0.125, 0.25]
        assert all(c.box[2] == 0 and c.box[4] == 1 for c in crops)
    else:  # centre crop after short-side resize to resize_short
        assert crops[0].box[4] - crops[0].box[2] == pytest.approx(32 / 37)


def test_bad_layout():
    with pytest.raises(ValueError, match="CLIPSxSPATIAL"):
        parse_layout("five")
    with pytest.raises(ValueError):
        parse_layout("5x2")


def test_resize_matrix_rows_sum_to_one_and_identity_at_same_size():
    first, m = resize_matrix(0, 10, 10, 10)
    assert first == 0 and np.allclose(m, np.eye(10))
    _, m = resize_matrix(2.5, 9.0, 12, 5)
    assert np.allclose(m.sum(1), 1)


def test_cut_takes_the_pixels_of_the_box_and_flips():
    h, w = 40, 80
    frame = np.zeros((1, h, w, 3), dtype=np.uint8)
    frame[0, :, :, 0] = np.arange(w)[None, :]  # R = x
    frame[0, :, :, 1] = np.arange(h)[:, None]  # G = y
    box = np.array([0, 1, 0.25, 0.5, 0.75, 1.0], dtype=np.float32)  # y 10..30, x 40..80
    out = cut(frame, box, False, 20)
    assert out.shape == (1, 20, 20, 3)
    assert abs(int(out[0, 0, 0, 0]) - 40) <= 1 and abs(int(out[0, 0, -1, 0]) - 79) <= 1
    assert abs(int(out[0, 0, 0, 1]) - 10) <= 1 and abs(int(out[0, -1, 0, 1]) - 29) <= 1
    flipped = cut(frame, box, True, 20)
    assert np.array_equal(flipped, out[:, :, ::-1])


def test_decode_size_keeps_input_resolution_for_the_smallest_crop():
    crops = sample_crops(TRAIN, "v", 100, 720, 1280)
    h, w = decode_size(crops, 720, 1280, 32)
    assert h < 720 and abs(w / h - 1280 / 720) < 0.02
    smallest = min(min((c.box[4] - c.box[2]) * h, (c.box[5] - c.box[3]) * w) for c in crops)
    assert smallest >= 31.5
    assert decode_size(crops, 48, 64, 112) == (48, 64)  # never upscale


def test_pairs_share_time_and_differ_in_space():
    s = CropSettings(mode="pairs", clip_frames=8, frame_stride=1, input_size=32, resize_short=37, pairs=3)
    crops = sample_crops(s, "v", 100, 48, 64)
    assert len(crops) == s.k == 6
    for p in range(3):
        a, b = crops[2 * p], crops[2 * p + 1]
        assert np.array_equal(a.frames, b.frames) and a.box[0] == b.box[0] and a.box[1] == b.box[1]
        assert not np.array_equal(a.box[2:], b.box[2:])
