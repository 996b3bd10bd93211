"""A seeded synthetic video dataset whose classes depend on appearance, on motion or on the order of events.

Why: a researcher needs data on which per-clip probes, mean-pooling over clips and order-aware aggregators
(SCALE, a transformer over clip features) provably score differently, small enough to generate in seconds
and laid out like UCF-101 so that the ordinary loader reads it. Three families of classes:

- appearance (5 classes): one digit shown for the whole video; any clip tells the class.
- order (20 classes): digit A in the first half, digit B != A in the second half. A clip inside one half
  shows one digit (per-clip probes see at most which digits occur); mean-pooling sees both digits but not
  their order, so it cannot beat 0.5 on a pair (A, B) vs (B, A); only an order-aware aggregator can reach
  1.0. (A clip across the midpoint shows A turning into B; `gap` blank frames there remove that leak.)
- motion (4 classes): one random digit moving right, left, down or up with wrap-around; a single frame
  says nothing, a clip of a few frames says everything.
- speed (2 classes): one random digit moving 1 or 3 px a frame (at 64 px) in a random direction; only
  the speed tells the class. For temporal self-supervised methods (docs/synth.md, "Which methods").

`colours="pool"` gives each video one colour from a shared pool instead of each digit its own colour, so
that the class is told by shape alone and colour jitter cannot erase it; `colours="segment"` redraws it
with every background segment; `sprite` sets the digit's size (docs/synth.md).

The design follows the prototype in DESIGN.md ("The synthetic benchmark"): grey low-contrast background
(texture amplitude 0.10, per-frame noise 0.03), five sklearn digits upscaled to 28 px sprites in 64 x 64
frames, each with its own fixed colour (no hue jitter: it erases the colour cue), 64 frames. Families are
generated as separate tasks by default (`task="order"`), because the prototype found that mixing the
appearance and order families in one label space made order-blind probes collapse on the same-digit
classes; `task="mixed"` puts all three in one label space with each class tagged by family.

Every video is a pure function of (seed, split, index): same seed, same pixels. The files are H.264
all-intra by default so that the encoder's quality drift across a group of pictures cannot become a
temporal cue (DESIGN.md reports an unexplained order bias of order-blind features).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from vcache.data.synth_io import _mapper, _noise, _progress_bar, prepare_out, write_mp4
from vcache.data.synth_sprites import DIGITS, GLYPH_MODES, SPRITE_FRACTION, digit_sprites, glyph_sprites

# The measured design (DESIGN.md, "The synthetic benchmark"): five digits (DIGITS), each with its own colour.
# Chosen here: saturated colours far apart in hue and far from the grey background (RGB in [0, 1]).
COLOURS: dict[int, tuple[float, float, float]] = {
    0: (0.92, 0.12, 0.12),  # red
    1: (0.12, 0.78, 0.18),  # green
    2: (0.15, 0.30, 0.95),  # blue
    3: (0.95, 0.85, 0.10),  # yellow
    4: (0.85, 0.15, 0.85),  # magenta
}
# Unit steps (rows, columns) of the motion family; rows first like the store's boxes.
DIRECTIONS: dict[str, tuple[int, int]] = {"Right": (0, 1), "Left": (0, -1), "Down": (1, 0), "Up": (-1, 0)}
FAMILIES: tuple[str, ...] = ("appearance", "order", "motion", "speed")
TASKS: dict[str, tuple[str, ...]] = {
    "order": ("order",),
    "appearance": ("appearance",),
    "motion": ("motion",),
    "speed": ("speed",),
    "mixed": ("appearance", "order", "motion"),  # the measured mixed set (docs/synth.md)
}
# Colour modes. "fixed": each digit its own colour (the measured design; colour alone tells the class).
# "pool": every video draws one colour from COLOUR_POOL, shared by all classes, so only the digit's shape
# tells the class and colour jitter (CVRL, SVT) cannot erase the class cue (chosen here, issue 14).
# "segment": a new COLOUR_POOL colour at every background segment, so colour cannot identify a video.
COLOUR_MODES: tuple[str, ...] = ("fixed", "pool", "segment")
COLOUR_POOL: tuple[tuple[float, float, float], ...] = (
    # Chosen here (issue 14): saturated colours whose luma (ITU-R 601) is at least 0.17 away from the
    # mid-grey background, four dark and four light, so that the digit's shape survives the greyscale
    # (p 0.2) and desaturation of CVRL's and SVT's colour jitter. The first pool (the five fixed colours
    # plus cyan, orange, violet) had green, magenta and violet within 0.11 of the background's luma: their
    # digits vanished from greyscaled or desaturated views, and CVRL's loss barely left chance.
    (0.80, 0.05, 0.05),  # dark red, luma 0.27
    (0.10, 0.10, 0.95),  # blue, 0.20
    (0.55, 0.00, 0.85),  # violet, 0.26
    (0.00, 0.55, 0.00),  # dark green, 0.32
    (1.00, 0.95, 0.15),  # yellow, 0.87
    (0.25, 1.00, 1.00),  # cyan, 0.78
    (0.60, 1.00, 0.30),  # light green, 0.80
    (1.00, 0.45, 0.95),  # pink, 0.67
)
# Speed family (chosen here): px per frame as fractions of the frame side, 3x apart so that a crop's
# rescaling (CVRL area 0.3-1: at most 1.8x) cannot turn one speed into the other.
SPEEDS: dict[str, float] = {"Slow": 1 / 64, "Fast": 3 / 64}
BACKGROUND_AMPLITUDE = 0.10  # DESIGN.md: texture amplitude 0.10 around mid-grey
NOISE_STD = 0.03  # DESIGN.md: per-frame noise 0.03
# Chosen here (the prototype's pitfall was a static per-video background, which instance losses use to
# tell videos apart): backgrounds come from a small pool shared by all videos and change, together with
# the sprite's position, at SEGMENTS randomly offset boundaries per video.
POOL_SIZE = 8
SEGMENTS = 4
MOTION_SPEED = 1 / 32  # fraction of the frame width per frame: 2 px at 64 px, 16 px over a 16-frame clip
SPLIT_CODES = {"train": 1, "test": 2}
# Measured here: decord 0.6 decodes these even widths (of 16..256) to (H, W, 4) arrays; refused.
DECORD_BAD_WIDTHS = (48, 72)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SynthClass:
    """One class: its UCF-style name, its family, the digits it shows in order, its motion direction."""

    name: str
    family: str
    digits: tuple[int, ...]
    direction: str | None = None
    speed: str | None = None


def class_list(task: str = "order") -> list[SynthClass]:
    """The classes of a task, in classInd order (family by family, then digits, then direction)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    classes: list[SynthClass] = []
    for family in TASKS[task]:
        if family == "appearance":
            classes += [SynthClass(f"App{a}", family, (a,)) for a in DIGITS]
        elif family == "order":
            pairs = [(a, b) for a in DIGITS for b in DIGITS if a != b]
            classes += [SynthClass(f"Ord{a}Then{b}", family, (a, b)) for a, b in pairs]
        elif family == "motion":
            classes += [SynthClass(f"Mot{d}", family, (), d) for d in DIRECTIONS]
        else:
            classes += [SynthClass(f"Spd{v}", family, (), None, v) for v in SPEEDS]
    return classes


@lru_cache(maxsize=4)
def background_pool(seed: int, size: int, pool_size: int = POOL_SIZE) -> np.ndarray:
    """Grey smooth textures (pool_size, size, size) around 0.5 with amplitude BACKGROUND_AMPLITUDE."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng([seed, 0])
    pool = np.empty((pool_size, size, size), np.float32)
    for i in range(pool_size):
        tex = gaussian_filter(rng.standard_normal((size, size)), sigma=size / 16, mode="wrap")
        pool[i] = 0.5 + BACKGROUND_AMPLITUDE * tex / np.abs(tex).max()
    return pool


def render_video(
    cls: SynthClass,
    rng: np.random.Generator,
    frames: int,
    size: int,
    pool: np.ndarray,
    gap: int = 0,
    colours: str = "fixed",
    sprite: float = SPRITE_FRACTION,
    glyphs: str = "fixed",
) -> np.ndarray:
    """Frames (frames, size, size, 3) uint8 RGB of one video of class `cls`, drawn with `rng`.

    gap > 0 blanks that many frames (background only) centred on the midpoint in the appearance and order
    families, so that no clip shorter than the gap sees both events (see docs/synth.md). sprite: the digit
    sprite's side as a fraction of the frame side. glyphs: "varied" draws each event's handwritten sample.
    """
    sprites = digit_sprites(size, sprite)
    side = sprites.shape[1]
    seg_len = max(1, frames // SEGMENTS)
    offset = int(rng.integers(seg_len))
    segment = (np.arange(frames) + offset) // seg_len  # background (and position) changes at boundaries
    backgrounds = pool[rng.integers(len(pool), size=int(segment[-1]) + 1)][segment]  # (T, H, W)

    moving = cls.family in ("motion", "speed")
    if moving:
        digit = DIGITS[int(rng.integers(len(DIGITS)))]
        digit_of_frame = np.full(frames, digit)
        if cls.family == "speed":  # a random direction: only the speed tells the class
            dy, dx = list(DIRECTIONS.values())[int(rng.integers(len(DIRECTIONS)))]
        else:
            dy, dx = DIRECTIONS[cls.direction or "Right"]
        start = rng.integers(size, size=2)
        speed = SPEEDS[cls.speed] if cls.speed else MOTION_SPEED
        step = np.arange(frames) * speed * size
        ys = np.rint(start[0] + dy * step).astype(int) % size
        xs = np.rint(start[1] + dx * step).astype(int) % size
    else:
        # Appearance: one digit throughout; order: A in the first half, B in the second half.
        half = np.arange(frames) >= frames // 2
        first, last = cls.digits[0], cls.digits[-1]
        digit_of_frame = np.where(half, last, first)
        # A new random position (sprite fully inside) for every (segment, event) piece of the video.
        piece = segment * 2 + half
        _, piece = np.unique(piece, return_inverse=True)
        corners = rng.integers(size - side + 1, size=(int(piece.max()) + 1, 2))
        ys, xs = corners[piece, 0], corners[piece, 1]
    blank = np.zeros(frames, bool)
    if not moving and gap > 0:
        blank[frames // 2 - gap // 2 : frames // 2 - gap // 2 + gap] = True

    # Pixels in 0..255: (grey background + noise) everywhere, then the sprite blended in its window only,
    # frame = background * (1 - alpha) + colour * alpha + noise. Written for speed (whole-array ops).
    video = _noise(rng, (frames, size, size, 3)) * (NOISE_STD * 255.0)
    video += backgrounds[..., None] * 255.0
    # "pool": one colour for the whole video; "segment": a new one with every background segment. Drawn
    # last so that "fixed" videos keep their pixels.
    pooled = None
    if colours == "pool":
        pooled = np.full(frames, int(rng.integers(len(COLOUR_POOL))))
    elif colours == "segment":
        pooled = rng.integers(len(COLOUR_POOL), size=int(segment[-1]) + 1)[segment]
    if glyphs == "varied":  # one handwritten sample per digit the video shows (drawn after the colours)
        samples = glyph_sprites(size, sprite)
        sprites = [s[int(rng.integers(len(s)))] for s in samples]
    offsets = np.arange(side)
    for t in np.flatnonzero(~blank):
        # Indices modulo size: the sprite wraps around the edges (only the motion family reaches them).
        window = np.ix_((offsets + ys[t]) % size, (offsets + xs[t]) % size)
        alpha = sprites[DIGITS.index(int(digit_of_frame[t]))][..., None]
        rgb = COLOURS[int(digit_of_frame[t])] if pooled is None else COLOUR_POOL[int(pooled[t])]
        colour = np.asarray(rgb, np.float32) * 255.0
        grey = backgrounds[t][window][..., None] * 255.0
        video[t][window] += alpha * (colour - grey)
    video += 0.5
    return np.clip(video, 0.0, 255.0, out=video).astype(np.uint8)


def make_video(
    videos_dir: Path,
    job: tuple[str, int, SynthClass, str],
    seed: int,
    frames: int,
    size: int,
    fps: int,
    crf: int,
    intra: bool,
    gap: int = 0,
    colours: str = "fixed",
    sprite: float = SPRITE_FRACTION,
    glyphs: str = "fixed",
) -> int:
    """Render and encode video `job` = (split, index, class, relative path); return its size in bytes."""
    split, index, cls, rel = job
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    path = videos_dir / rel
    pool = background_pool(seed, size)
    video = render_video(cls, rng, frames, size, pool, gap=gap, colours=colours, sprite=sprite, glyphs=glyphs)
    write_mp4(path, video, fps, crf=crf, intra=intra)
    return path.stat().st_size


def video_name(cls: SynthClass, group: int, clip: int) -> str:
    """UCF-101 style relative path `<Class>/v_<Class>_g<group>_c<clip>.mp4`."""
    return f"{cls.name}/v_{cls.name}_g{group:02d}_c{clip:02d}.mp4"


def plan(task: str, n_train: int, n_test: int) -> list[tuple[str, int, SynthClass, str]]:
    """(split, index, class, relative path) of every video, test first.

    Video `index` of a split has class `index % n_classes`, so classes are balanced and a video's content
    does not depend on how many videos are made. Names follow UCF-101: clips of 4 per group, test groups
    first and train groups after them, so no group straddles the two splits.
    """
    classes = class_list(task)
    n = len(classes)
    clips_per_group = 4
    test_groups = math.ceil(math.ceil(n_test / n) / clips_per_group)
    out = []
    for split, count, first_group in (("test", n_test, 1), ("train", n_train, test_groups + 1)):
        for index in range(count):
            ordinal = index // n
            group, clip = first_group + ordinal // clips_per_group, ordinal % clips_per_group + 1
            cls = classes[index % n]
            out.append((split, index, cls, video_name(cls, group, clip)))
    return out


def generate(
    out: Path,
    n_train: int,
    n_test: int,
    seed: int = 0,
    frames: int = 64,
    size: int = 64,
    fps: int = 25,
    task: str = "order",
    crf: int = 20,
    intra: bool = True,
    gap: int = 0,
    colours: str = "fixed",
    sprite: float = SPRITE_FRACTION,
    glyphs: str = "fixed",
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Write the dataset to `out` (UCF-101 layout plus classes.json) and return a summary.

    Layout: videos/<Class>/v_<Class>_gGG_cCC.mp4, splits/classInd.txt ("1 Class"), splits/trainlist01.txt
    ("Class/file.mp4 <1-based label>"), splits/testlist01.txt ("Class/file.mp4"), classes.json (classes with
    their family, generator settings, seed). Video (split, index) is drawn from the random generator seeded
    with (seed, split, index) and is therefore the same whatever n_train, n_test and workers are.
    workers > 1 renders and encodes in that many processes. gap: blank frames between the two events.
    """
    if n_train < 0 or n_test < 0 or frames < 2 or size < 32 or fps < 1:
        raise ValueError("need n_train, n_test >= 0, frames >= 2, size >= 32, fps >= 1")
    lo = 4 / size  # a sprite of at least 4 px
    if not lo <= sprite <= 1.0:
        raise ValueError(f"sprite {sprite:g}: the digit's side as a fraction of the frame, in [{lo:g}, 1]")
    if glyphs not in GLYPH_MODES:
        raise ValueError(f"glyphs {glyphs!r}: choose one of {', '.join(GLYPH_MODES)}")
    if colours not in COLOUR_MODES:
        raise ValueError(f"colours {colours!r}: choose one of {', '.join(COLOUR_MODES)}")
    if not 0 <= gap <= frames - 2:
        raise ValueError(f"gap {gap}: need 0 <= gap <= frames - 2 so that both events stay visible")
    if size % 2 or size in DECORD_BAD_WIDTHS:
        raise ValueError(
            f"size {size}: must be even (yuv420p halves the chroma) and not {DECORD_BAD_WIDTHS} "
            "(decord 0.6 returns 4-channel frames at these widths)"
        )
    classes = class_list(task)
    out = Path(out)
    prepare_out(out, overwrite)
    videos = plan(task, n_train, n_test)
    for cls in classes:
        (out / "videos" / cls.name).mkdir(exist_ok=True)

    start = time.perf_counter()
    total_bytes = 0
    options = dict(
        seed=seed,
        frames=frames,
        size=size,
        fps=fps,
        crf=crf,
        intra=intra,
        gap=gap,
        colours=colours,
        sprite=sprite,
        glyphs=glyphs,
    )
    make = partial(make_video, out / "videos", **options)
    with _progress_bar(progress, len(videos)) as advance, _mapper(workers) as mapper:
        for nbytes in mapper(make, videos):
            total_bytes += nbytes
            advance()
    seconds = time.perf_counter() - start

    label = {c.name: i + 1 for i, c in enumerate(classes)}
    splits = out / "splits"
    (splits / "classInd.txt").write_text("".join(f"{i} {name}\n" for name, i in label.items()))
    (splits / "trainlist01.txt").write_text(
        "".join(f"{rel} {label[c.name]}\n" for s, _, c, rel in videos if s == "train")
    )
    (splits / "testlist01.txt").write_text("".join(f"{rel}\n" for s, _, c, rel in videos if s == "test"))
    settings = {
        "task": task,
        "frames": frames,
        "size": size,
        "fps": fps,
        "codec": "libx264",
        "pix_fmt": "yuv420p",
        "crf": crf,
        "intra": intra,
        "gap": gap,
        "colour_mode": colours,
        "colour_pool": [list(c) for c in COLOUR_POOL],
        "speeds_px_per_frame": {k: v * size for k, v in SPEEDS.items()},
        "digits": list(DIGITS),
        "colours": {str(d): list(c) for d, c in COLOURS.items()},
        "sprite_px": int(digit_sprites(size, sprite).shape[1]),
        "sprite_fraction": sprite,
        "glyphs": glyphs,
        "background_amplitude": BACKGROUND_AMPLITUDE,
        "noise_std": NOISE_STD,
        "background_pool": POOL_SIZE,
        "segments": SEGMENTS,
        "motion_px_per_frame": MOTION_SPEED * size,
    }
    meta = {
        "format": "vcache-synth",
        "version": FORMAT_VERSION,
        "seed": seed,
        "n_train": n_train,
        "n_test": n_test,
        "settings": settings,
        "families": {f: [c.name for c in classes if c.family == f] for f in TASKS[task]},
        "classes": [
            {
                "name": c.name,
                "index": label[c.name] - 1,
                "class_ind": label[c.name],
                "family": c.family,
                "digits": list(c.digits),
                "direction": c.direction,
                "speed": c.speed,
            }
            for c in classes
        ],
    }
    (out / "classes.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {
        "out": str(out),
        "task": task,
        "classes": len(classes),
        "n_train": n_train,
        "n_test": n_test,
        "seconds": round(seconds, 3),
        "videos_per_s": round(len(videos) / seconds, 1) if seconds > 0 else None,
        "bytes": total_bytes,
    }


def class_families(out: Path) -> dict[str, str]:
    """Class name -> family ("appearance", "order", "motion") of a generated dataset: per-family scores."""
    meta = json.loads((Path(out) / "classes.json").read_text())
    return {c["name"]: c["family"] for c in meta["classes"]}
