"""`vcache synth` for self-supervision (issue 14): colours from a shared pool (shape tells the class),
backgrounds that change within a video, and the speed family; checked on decoded frames."""

from __future__ import annotations

from pathlib import Path

import decord
import numpy as np
import pytest

from vcache.data.synth import (
    COLOUR_POOL,
    SPEEDS,
    background_pool,
    class_list,
    digit_sprites,
    generate,
    render_video,
)

FRAMES, SIZE = 16, 64


def decode(path: Path) -> np.ndarray:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy().astype(np.float32) / 255.0


def digit_colour(video: np.ndarray) -> np.ndarray:
    """Mean RGB of the saturated pixels (the background is grey, so they are the digit's)."""
    saturated = (video.max(axis=-1) - video.min(axis=-1)) > 0.4  # the sprite's core (pool spreads >= 0.55)
    assert saturated.sum() > 10 * len(video), "the digit should be visible in every frame"
    return video[saturated].mean(axis=0)


@pytest.fixture(scope="module")
def pooled(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_pool")
    generate(out, n_train=40, n_test=0, frames=FRAMES, size=SIZE, task="appearance", colours="pool",
             progress=False)  # fmt: skip
    return out


def test_pooled_colours_come_from_the_pool_and_do_not_tell_the_class(pooled: Path) -> None:
    pool = np.asarray(COLOUR_POOL)
    colour_of: dict[str, set[int]] = {}
    for rel in (line.split()[0] for line in (pooled / "splits" / "trainlist01.txt").read_text().splitlines()):
        rgb = digit_colour(decode(pooled / "videos" / rel))
        # Blending and the codec pull the colour towards the grey background: compare directions from grey.
        chroma = (pool - 0.5) / np.linalg.norm(pool - 0.5, axis=1, keepdims=True)
        cos = chroma @ ((rgb - 0.5) / np.linalg.norm(rgb - 0.5))
        best, second = np.sort(cos)[::-1][:2]
        assert best > 0.97 and second < best - 0.03, (rel, rgb, cos)
        dist = -cos
        colour_of.setdefault(rel.split("/")[0], set()).add(int(dist.argmin()))
    # 8 videos a class: each class shows several colours, and classes share colours.
    assert all(len(c) >= 3 for c in colour_of.values()), colour_of
    shared = set.intersection(*colour_of.values()) | set()
    pairs = [a & b for a in colour_of.values() for b in colour_of.values() if a is not b]
    assert any(pairs), (colour_of, shared)


def test_background_changes_within_a_video(pooled: Path) -> None:
    """The grey texture away from the digit differs between frames of one video (the pool changes at
    segment boundaries), so a static per-video background cannot identify the video."""
    video = decode(next((pooled / "videos").rglob("*.mp4")))
    grey = ((video.max(axis=-1) - video.min(axis=-1)) < 0.1).all(axis=0)  # never under the digit
    assert grey.sum() > 100
    diffs = [np.abs(video[t, ..., 0][grey] - video[0, ..., 0][grey]).mean() for t in range(len(video))]
    assert max(diffs) > 0.03  # another texture (amplitude 0.10) in at least one segment
    assert min(diffs[1:]) < 0.03  # and the same texture within a segment (noise only)


def test_pooled_colour_is_drawn_last_so_fixed_videos_keep_their_pixels() -> None:
    """Rendered with the same generator state, "fixed" and "pool" differ only on the digit."""
    cls = class_list("order")[0]
    pool = background_pool(0, 32)
    a = render_video(cls, np.random.default_rng(5), 8, 32, pool).astype(int)
    b = render_video(cls, np.random.default_rng(5), 8, 32, pool, colours="pool").astype(int)
    differs = np.abs(a - b).max(axis=-1) > 0
    assert differs.any() and (differs.sum(axis=(1, 2)) < digit_sprites(32)[0].size).all()


def test_speed_classes_move_at_their_speed(tmp_path: Path) -> None:
    generate(tmp_path, n_train=8, n_test=0, frames=FRAMES, size=SIZE, task="speed", progress=False)
    for rel in (
        line.split()[0] for line in (tmp_path / "splits" / "trainlist01.txt").read_text().splitlines()
    ):
        cls = next(c for c in class_list("speed") if c.name == rel.split("/")[0])
        video = decode(tmp_path / "videos" / rel)
        mask = (video.max(axis=-1) - video.min(axis=-1)) > 0.35
        # The wrapped shift (any direction) that best maps frame t onto frame t + 2.
        best, score = None, -1
        for dy in range(-8, 9):
            for dx in range(-8, 9):
                if dy and dx:
                    continue
                s = int(np.sum(np.roll(mask[:-2], (dy, dx), axis=(1, 2)) & mask[2:]))
                if s > score:
                    best, score = (dy, dx), s
        px = abs(best[0]) + abs(best[1])
        assert px == round(2 * SPEEDS[cls.speed] * SIZE), (rel, best)


def test_pooled_digits_stay_visible_in_greyscale() -> None:
    """Every pool colour differs from the grey background in luma, so a greyscaled view (CVRL / SVT
    augmentation, p 0.2) still shows the digit's shape (issue 14)."""
    luma = np.asarray(COLOUR_POOL) @ np.array([0.299, 0.587, 0.114])
    assert (np.abs(luma - 0.5) >= 0.15).all(), luma
    cls = class_list("appearance")[0]
    pool = background_pool(0, 64)
    for seed in range(12):  # covers several pool colours
        video = render_video(cls, np.random.default_rng(seed), 2, 64, pool, colours="pool") / 255.0
        grey = video @ np.array([0.299, 0.587, 0.114])
        digit = (video.max(axis=-1) - video.min(axis=-1)) > 0.4
        assert np.abs(grey[digit] - np.median(grey)).mean() > 0.1, seed


def test_segment_colours_change_with_the_background_and_hold_within_a_segment() -> None:
    """`--colours segment`: a new pool colour at every background segment, so that the colour of one
    clip does not identify its video (no instance shortcut by colour); fixed videos keep their pixels."""
    cls = class_list("appearance")[2]
    pool = background_pool(0, 64)
    frames = 64
    changes, within = 0, 0
    for seed in range(6):
        video = render_video(cls, np.random.default_rng(seed), frames, 64, pool, colours="segment") / 255.0
        colours = [digit_colour(video[t : t + 1]) for t in range(frames)]
        hues = np.array([int(np.argmax(np.asarray(COLOUR_POOL) @ (c - 0.5))) for c in colours])
        back = video.mean(axis=(1, 2, 3))  # the texture's mean moves at segment boundaries
        jumps = np.flatnonzero(hues[1:] != hues[:-1]) + 1
        changes += len(jumps)
        # every colour change sits at a frame where the background changes too
        within += sum(abs(back[t] - back[t - 1]) < 1e-4 for t in jumps)
    assert changes >= 6 and within == 0
    a = render_video(cls, np.random.default_rng(5), 8, 32, background_pool(0, 32)).astype(int)
    b = render_video(cls, np.random.default_rng(5), 8, 32, background_pool(0, 32), colours="segment")
    differs = np.abs(a - b.astype(int)).max(axis=-1) > 0
    assert differs.any() and (differs.sum(axis=(1, 2)) < digit_sprites(32)[0].size).all()


def test_sprite_fraction_sets_the_digit_size(tmp_path: Path) -> None:
    """`--sprite 0.75`: 48-px sprites in 64-px frames (the default 28/64 gives 28 px); recorded in
    classes.json; a fraction outside (0, 1] is refused."""
    cls = class_list("appearance")[0]
    pool = background_pool(0, 64)

    def extent(sprite: float) -> int:
        video = render_video(cls, np.random.default_rng(1), 1, 64, pool, sprite=sprite) / 255.0
        rows = np.flatnonzero(((video[0].max(-1) - video[0].min(-1)) > 0.4).any(axis=1))
        return int(rows.max() - rows.min() + 1)

    assert digit_sprites(64).shape[1] == 28 and digit_sprites(64, 0.75).shape[1] == 48
    assert extent(0.75) > 1.5 * extent(28 / 64)
    generate(tmp_path / "s", 2, 0, frames=4, size=64, task="appearance", sprite=0.75, progress=False)
    import json

    settings = json.loads((tmp_path / "s" / "classes.json").read_text())["settings"]
    assert settings["sprite_px"] == 48 and settings["sprite_fraction"] == 0.75
    with pytest.raises(ValueError, match="sprite"):
        generate(tmp_path / "bad", 2, 0, frames=4, size=64, sprite=1.5, progress=False)


def test_varied_glyphs_give_each_video_its_own_handwriting() -> None:
    """`--glyphs varied`: videos of one class show different sklearn samples of their digit (shape tells
    videos apart); with the same generator state only the digit's pixels change (drawn last)."""
    from vcache.data.synth_sprites import glyph_sprites

    cls = class_list("appearance")[3]
    pool = background_pool(0, 64)
    assert all(len(g) > 100 for g in glyph_sprites(64, 0.75))

    def mask(seed: int, glyphs: str) -> np.ndarray:
        """The digit's pixels (its own fixed colour), from the top-left corner of its bounding box."""
        video = render_video(cls, np.random.default_rng(seed), 1, 64, pool, sprite=0.75, glyphs=glyphs)
        m = (video[0].max(-1).astype(int) - video[0].min(-1)) > 100
        ys, xs = np.nonzero(m)
        return np.pad(m, 48)[ys.min() + 48 : ys.min() + 88, xs.min() + 48 : xs.min() + 88]

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        return float((a & b).sum() / (a | b).sum())

    fixed = [mask(s, "fixed") for s in range(6)]
    varied = [mask(s, "varied") for s in range(6)]
    assert min(iou(f, fixed[0]) for f in fixed) > 0.8  # one image a digit (measured 0.85-0.89)
    assert max(iou(v, varied[0]) for v in varied[1:]) < 0.6  # each video its own handwriting (0.26-0.50)
    a = render_video(cls, np.random.default_rng(2), 4, 32, background_pool(0, 32), colours="pool").astype(int)
    b = render_video(
        cls, np.random.default_rng(2), 4, 32, background_pool(0, 32), colours="pool", glyphs="varied"
    )
    differs = np.abs(a - b.astype(int)).max(axis=-1) > 0
    assert differs.any() and (differs.sum(axis=(1, 2)) <= digit_sprites(32)[0].size).all()
