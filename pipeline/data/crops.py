"""Space-time crop sampling and cutting.

A crop is a set of frame indices plus a box `t0, t1, y0, x0, y1, x1` normalised to [0, 1] in the original,
unflipped frame (DESIGN.md): t counts frames over the counted total, end exclusive, so
t0 = first / N and t1 = (last + 1) / N. The flip is recorded apart and does not change the box.

Crops are a deterministic function of (seed, video path, counted frames, frame size, settings), so reruns,
resumes and any number of workers cut the same crops.

Modes
- train: K random crops (SCALE section 4 uses 16 clips of 16 frames with PySlowFast's augmentation):
  random start, random-resized-crop box (area fraction and aspect ratio drawn log-uniformly as in
  PySlowFast's/torchvision's RandomResizedCrop), horizontal flip with probability 0.5.
  Our choice where the papers are silent: area in [0.3, 1] (CVRL's range) and aspect in [3/4, 4/3], so a
  crop keeps most of the frame; 10 tries, then the largest centred box of an allowed aspect.
- eval: `clips x spatial` crops, clip starts uniformly spaced over the video. With 3 spatial crops the
  short side is resized to the input size and the crops sit left/centre/right (top/centre/bottom for
  portrait video), the 3-crop protocol of SlowFast; with 1 spatial crop the short side is resized to
  `resize_short` and the centre `input_size` square is taken (the torchvision Kinetics protocol).
  5x3 is the default, 2x3 for SSv2-like data, 10x1 for the retrieval protocol.
- pairs: STiCA's input (section 3.2): P pairs of two large crops; the two crops of a pair share one random
  temporal extent and differ spatially (independent random-resized-crop boxes and flips). Crop rows 2p and
  2p + 1 are pair p. STiCA's default clip is 32 frames (a 4 x 7 x 7 map from R(2+1)D-18 at 112 px).

- dense: every window of the video (issue 15, for temporal localization): window w starts at frame
  w * window_step (default one clip span, frames x stride: no overlap and no gap) and spans frames x stride
  frames; windows go on until one reaches the last frame, so the whole video is covered (the last window's
  indices past the end are clamped). One centre crop per window as eval mode's 1-crop rule, or 3
  (left/centre/right) with `spatial=3`; rows are window-major. A video of at most one span gives 1 window.
  The engine decodes and forwards a long video in segments of `segment_windows` windows.

Videos shorter than a clip: frame indices are clamped to the last frame (it repeats), t1 = 1.
Each crop also records `span_end`, the frame after the frames it stands for (its last frame + 1; a dense
window's start + frames x stride, at most N): its time stamps are those of frames `frames[0]` and
`span_end` (vcache.data.video.VideoInfo.times).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

LAYOUTS = {"5x3": (5, 3), "2x3": (2, 3), "10x1": (10, 1), "1x1": (1, 1), "1x3": (1, 3), "5x1": (5, 1)}


@dataclass(frozen=True)
class CropSettings:
    mode: str  # "train" | "eval" | "pairs"
    clip_frames: int
    frame_stride: int
    input_size: int
    resize_short: int
    crops_per_video: int = 16  # train mode
    layout: str = "5x3"  # eval mode
    pairs: int = 4  # pairs mode
    window_step: int = 0  # dense mode: frames between window starts (0: one clip span, frames x stride)
    spatial: int = 1  # dense mode: crops per window (1 centre, 3 left/centre/right)
    seed: int = 0
    flip: bool = True
    area: tuple[float, float] = (0.3, 1.0)
    aspect: tuple[float, float] = (3 / 4, 4 / 3)

    @property
    def k(self) -> int:
        if self.mode == "eval":
            t, s = parse_layout(self.layout)
            return t * s
        if self.mode == "pairs":
            return 2 * self.pairs
        if self.mode == "dense":
            return 0  # a variable number of rows per video
        return self.crops_per_video

    @property
    def slot_crops(self) -> int:
        """Crops one decoding task returns at most: the video's K, or a dense segment's."""
        return segment_windows(self) * self.spatial if self.mode == "dense" else self.k

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["area"], d["aspect"] = list(self.area), list(self.aspect)
        d["crops_per_video"] = self.k
        if self.mode == "dense":
            d["window_step"] = window_step(self)  # the effective step
        else:  # only dense mode has them: stores of the other modes keep the attributes they always had
            del d["window_step"], d["spatial"]
        return d


def parse_layout(layout: str) -> tuple[int, int]:
    try:
        t, s = (int(v) for v in layout.lower().split("x"))
    except ValueError:
        raise ValueError(f"layout {layout!r} is not CLIPSxSPATIAL such as 5x3") from None
    if t < 1 or s not in (1, 3):
        raise ValueError(f"layout {layout!r}: need at least 1 clip and 1 or 3 spatial crops")
    return t, s


@dataclass
class Crop:
    frames: np.ndarray  # (T,) int frame indices into the video, in [0, N)
    box: np.ndarray  # (6,) float32 t0, t1, y0, x0, y1, x1
    flip: bool
    span_end: int = 0  # the frame after those the crop stands for (see the module docstring)


DENSE_SEGMENT_CROPS = 16  # crops a dense decoding task holds (one shared-memory slot, as K = 16)


def window_span(s: CropSettings) -> int:
    return s.clip_frames * s.frame_stride


def window_step(s: CropSettings) -> int:
    return s.window_step or window_span(s)


def dense_windows(s: CropSettings, num_frames: int) -> int:
    """Windows of a dense video: starts 0, step, 2 step ... until a window reaches the last frame."""
    span = window_span(s)
    return 1 if num_frames <= span else -(-(num_frames - span) // window_step(s)) + 1


def segment_windows(s: CropSettings) -> int:
    return max(1, DENSE_SEGMENT_CROPS // max(1, s.spatial))


def dense_crops(
    s: CropSettings, num_frames: int, height: int, width: int, first: int, stop: int
) -> list[Crop]:
    """The crops of windows `first .. stop - 1` of a dense video, window-major."""
    boxes = _eval_boxes(s, s.spatial, height, width)
    out = []
    for w in range(first, stop):
        start = w * window_step(s)
        for b in boxes:
            c = _crop(start, b, False, s, num_frames)
            c.span_end = min(start + window_span(s), num_frames)
            out.append(c)
    return out


def _rng(settings: CropSettings, path: str, num_frames: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{settings.seed}|{path}|{num_frames}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _clip_frames(start: int, settings: CropSettings, num_frames: int) -> np.ndarray:
    idx = start + np.arange(settings.clip_frames) * settings.frame_stride
    return np.minimum(idx, num_frames - 1)


def _span(settings: CropSettings) -> int:
    return (settings.clip_frames - 1) * settings.frame_stride + 1


def _random_box(
    rng: np.random.Generator, s: CropSettings, h: int, w: int
) -> tuple[float, float, float, float]:
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*s.area)
        ratio = math.exp(rng.uniform(math.log(s.aspect[0]), math.log(s.aspect[1])))
        cw, ch = math.sqrt(target * ratio), math.sqrt(target / ratio)
        if cw <= w and ch <= h:
            y0, x0 = rng.uniform(0, h - ch), rng.uniform(0, w - cw)
            return y0 / h, x0 / w, (y0 + ch) / h, (x0 + cw) / w
    # fallback: the largest centred box with an allowed aspect ratio
    ratio = min(max(w / h, s.aspect[0]), s.aspect[1])
    cw, ch = (w, w / ratio) if w / h < ratio else (h * ratio, h)
    y0, x0 = (h - ch) / 2, (w - cw) / 2
    return y0 / h, x0 / w, (y0 + ch) / h, (x0 + cw) / w


def _eval_boxes(s: CropSettings, n_spatial: int, h: int, w: int) -> list[tuple[float, float, float, float]]:
    short = min(h, w)
    side = short if n_spatial == 3 else short * s.input_size / s.resize_short
    ch, cw = min(side, h), min(side, w)
    if n_spatial == 1:
        offsets = [0.5]
    else:
        offsets = [0.0, 0.5, 1.0]
    boxes = []
    for o in offsets:
        if w >= h:  # landscape: move along x
            y0, x0 = (h - ch) / 2, o * (w - cw)
        else:
            y0, x0 = o * (h - ch), (w - cw) / 2
        boxes.append((y0 / h, x0 / w, (y0 + ch) / h, (x0 + cw) / w))
    return boxes


def sample_crops(settings: CropSettings, path: str, num_frames: int, height: int, width: int) -> list[Crop]:
    """The crops of one video (see the module docstring for the conventions)."""
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    span = _span(settings)
    last_start = max(0, num_frames - span)
    crops: list[Crop] = []
    if settings.mode == "train":
        rng = _rng(settings, path, num_frames)
        for _ in range(settings.crops_per_video):
            start = int(rng.integers(0, last_start + 1))
            y0, x0, y1, x1 = _random_box(rng, settings, height, width)
            flip = bool(settings.flip and rng.random() < 0.5)
            crops.append(_crop(start, (y0, x0, y1, x1), flip, settings, num_frames))
    elif settings.mode == "eval":
        n_clips, n_spatial = parse_layout(settings.layout)
        starts = (
            np.round(np.linspace(0, last_start, n_clips)).astype(int) if n_clips > 1 else [last_start // 2]
        )
        boxes = _eval_boxes(settings, n_spatial, height, width)
        for start in starts:
            for b in boxes:
                crops.append(_crop(int(start), b, False, settings, num_frames))
    elif settings.mode == "pairs":
        rng = _rng(settings, path, num_frames)
        for _ in range(settings.pairs):
            start = int(rng.integers(0, last_start + 1))
            for _ in range(2):
                y0, x0, y1, x1 = _random_box(rng, settings, height, width)
                flip = bool(settings.flip and rng.random() < 0.5)
                crops.append(_crop(start, (y0, x0, y1, x1), flip, settings, num_frames))
    elif settings.mode == "dense":
        return dense_crops(settings, num_frames, height, width, 0, dense_windows(settings, num_frames))
    else:
        raise ValueError(f"unknown sampling mode {settings.mode!r} (train, eval, pairs or dense)")
    return crops


def _crop(start: int, yx: tuple[float, ...], flip: bool, s: CropSettings, num_frames: int) -> Crop:
    frames = _clip_frames(start, s, num_frames)
    t0, t1 = frames[0] / num_frames, (frames[-1] + 1) / num_frames
    return Crop(frames, np.array([t0, t1, *yx], dtype=np.float32), flip, int(frames[-1]) + 1)


def decode_size(crops: list[Crop], height: int, width: int, input_size: int) -> tuple[int, int]:
    """The smallest frame size at which every crop still has at least `input_size` pixels a side.

    Decoding at this size (decord's resize at decode time) is ~7x faster than full size on large video;
    never larger than the original.
    """
    smallest = min(min((c.box[4] - c.box[2]) * height, (c.box[5] - c.box[3]) * width) for c in crops)
    scale = min(1.0, input_size / max(1e-6, smallest))
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_matrix(start: float, stop: float, length: int, out: int) -> tuple[int, np.ndarray]:
    """Bilinear weights that map pixels [start, stop) of an axis of `length` pixels to `out` samples.

    Returns (first pixel, matrix (out, n)) covering only the pixels the box touches. Resizing as two
    small matrix products took 11 ms a video against 110-170 ms for interpolate/grid_sample (DESIGN.md).
    """
    centres = start + (np.arange(out) + 0.5) * (stop - start) / out - 0.5
    centres = np.clip(centres, 0, length - 1)
    lo = np.floor(centres).astype(int)
    hi = np.minimum(lo + 1, length - 1)
    frac = (centres - lo).astype(np.float32)
    first, last = int(lo.min()), int(hi.max())
    m = np.zeros((out, last - first + 1), dtype=np.float32)
    rows = np.arange(out)
    np.add.at(m, (rows, lo - first), 1 - frac)
    np.add.at(m, (rows, hi - first), frac)
    return first, m


def cut(frames: np.ndarray, box: np.ndarray, flip: bool, size: int) -> np.ndarray:
    """Cut one crop from frames (T, h, w, 3) uint8 decoded at any size: the box is normalised."""
    _, h, w, _ = frames.shape
    y0, x0, y1, x1 = (float(v) for v in box[2:])
    fy, my = resize_matrix(y0 * h, y1 * h, h, size)
    fx, mx = resize_matrix(x0 * w, x1 * w, w, size)
    region = frames[:, fy : fy + my.shape[1], fx : fx + mx.shape[1]].astype(np.float32)
    t, rh, rw, c = region.shape
    # two matrix products on views, no transposes: 1.0-2.1x faster than np.einsum(optimize=True) with numpy
    # 2.4 (benchmarks/bench_decode_path.py; pixels within 1 of it, float32 summation order)
    out = np.matmul(my, region.reshape(t, rh, rw * c)).reshape(t * size, rw, c)  # rows
    out = np.matmul(mx, out).reshape(t, size, size, c)  # columns
    if flip:
        out = out[:, :, ::-1]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
