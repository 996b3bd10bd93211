"""Decoding one video (or one dense segment) into its crops, inside a worker process: probe the trusted frame
count, sample the crops of every crop set, decode the frames they need once, in order, at the size they
need, cut them. No torch here (workers start fast). The process side is vcache.extract.workers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from vcache.data.crops import (
    CropSettings,
    cut,
    decode_size,
    dense_crops,
    dense_windows,
    sample_crops,
    segment_windows,
)
from vcache.data.records import DONE, FAILED, Reason, VideoMeta
from vcache.data.video import VideoError, VideoInfo, capture_stderr, decode_frames, probe, warnings_for
from vcache.extract.slots import slot_bytes, split_crops


@dataclass
class DecodeTask:
    index: int  # row of the video in the store
    path: str  # file to open
    key: str  # the video's relative path: seeds its crops
    settings: CropSettings
    max_decode_errors: int | None = None  # more decoder messages than this: the video fails
    more: tuple[CropSettings, ...] = ()  # further crop sets cut from the same decoded frames (see groups)
    windows: tuple[int, int] | None = None  # dense mode: the windows of this segment (first, stop)
    info: VideoInfo | None = None  # dense mode, segments after the first: the probe, not repeated

    @property
    def groups(self) -> tuple[CropSettings, ...]:
        return (self.settings, *self.more)


@dataclass
class DecodeResult:
    index: int
    meta: VideoMeta
    # (K, T, S, S, 3) uint8; with several crop sets (DecodeTask.more) one flat buffer holding each set's
    # crops in turn (split_crops), and boxes / flips stacked: rows g*K .. (g+1)*K - 1 are set g's
    crops: np.ndarray | None = None
    boxes: np.ndarray | None = None  # (K, 6) float32
    flips: np.ndarray | None = None  # (K,) bool
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)
    info: VideoInfo | None = None  # the probe, until the warnings are made (not sent back)
    notes: list[str] = field(default_factory=list)
    in_slot: bool = False  # the crops were written into the task's shared-memory slot (crops is None)
    slot: int | None = None  # in the parent: the slot that holds the crops, until DecodePool.release
    times: np.ndarray | None = None  # (rows, 2) start/end seconds; a dense first segment: the whole video's
    first_row: int = 0  # dense mode: the video's row of this segment's first crop
    total_rows: int = 0  # the video's rows (K, or a dense video's windows x spatial crops)
    probe: VideoInfo | None = None  # a dense first segment: the probe (without times) for the next segments


def decode_task(task: DecodeTask, out: np.ndarray | None = None) -> DecodeResult:
    """Decode one video into its crops. Never raises: a bad video becomes a failed result with a reason.
    FFmpeg's messages are captured (vcache.data.video.capture_stderr) and become the video's record.
    `out`: where to write the crops if their shape matches (a shared-memory slot); then `in_slot` is set."""
    t_start = time.perf_counter()
    with capture_stderr() as messages:
        res = _decode(task, out)
    if res.meta.status == DONE:
        info, decoded = res.info, res.meta.decoded_frames
        res.meta.decode_errors = len(messages)
        res.meta.warning = "; ".join(warnings_for(info, decoded, messages) + res.notes)[:300]
        limit = task.max_decode_errors
        if limit is not None and len(messages) > limit:
            text = f"{len(messages)} decoder errors (over --max-decode-errors {limit}): {res.meta.warning}"
            meta = VideoMeta(status=FAILED, reason_code=int(Reason.DECODE_ERROR), reason=text[:200])
            meta.decode_errors, meta.warning = len(messages), res.meta.warning
            res = DecodeResult(task.index, meta)
        res.info = None
        res.in_slot = res.in_slot or (out is not None and res.crops is out)
    elif messages:
        res.meta.decode_errors = len(messages)
    res.seconds = time.perf_counter() - t_start
    return res


def _decode(task: DecodeTask, out: np.ndarray | None = None) -> DecodeResult:
    if task.settings.mode == "dense":
        return _decode_dense(task, out)
    groups = task.groups
    try:
        info = probe(task.path)
        sets = [sample_crops(s, task.key, info.num_frames, info.height, info.width) for s in groups]
        # one decode for every crop set: at the largest size any set needs, of the frames any set needs
        h, w = info.height, info.width
        sizes = [decode_size(c, h, w, s.input_size) for c, s in zip(sets, groups, strict=True)]
        dh, dw = max(h for h, _ in sizes), max(w for _, w in sizes)
        needed = np.unique(np.concatenate([c.frames for crops in sets for c in crops]))
        notes: list[str] = []
        frames, decoded = decode_frames(task.path, needed, dh, dw, info.num_frames, notes)
        shapes = [crop_shape(s) for s in groups]
        if len(groups) == 1:
            if out is None or out.shape != shapes[0]:
                out = np.empty(shapes[0], dtype=np.uint8)
            views = [out]
        else:
            if out is None or out.ndim != 1 or out.size < slot_bytes(shapes):
                out = np.empty(slot_bytes(shapes), dtype=np.uint8)
            views = split_crops(out, shapes)
        for crops, s, view in zip(sets, groups, views, strict=True):
            for i, c in enumerate(crops):
                clip = np.stack([frames[int(f)] for f in c.frames])
                view[i] = cut(clip, c.box, c.flip, s.input_size)
    except VideoError as e:
        return DecodeResult(task.index, VideoMeta(status=FAILED, reason_code=int(e.code), reason=e.text))
    except Exception as e:  # anything unexpected still must not stop the run
        meta = VideoMeta(
            status=FAILED, reason_code=int(Reason.DECODE_ERROR), reason=f"{type(e).__name__}: {e}"[:200]
        )
        return DecodeResult(task.index, meta)
    meta = VideoMeta(
        status=DONE,
        num_frames=info.num_frames,
        decoded_frames=decoded,
        fps=info.fps,
        height=info.height,
        width=info.width,
        rotation=info.rotation,
    )
    boxes = np.stack([c.box for crops in sets for c in crops]).astype(np.float32)
    flips = np.array([c.flip for crops in sets for c in crops], dtype=bool)
    res = DecodeResult(task.index, meta, out, boxes, flips, info=info, notes=notes)
    res.times, res.total_rows = row_times(info, [c for crops in sets for c in crops]), len(sets[0])
    return res


def _decode_dense(task: DecodeTask, out: np.ndarray | None = None) -> DecodeResult:
    """One segment of a dense video (task.windows; one crop set): its crops into `out` when it fits."""
    s = task.settings
    try:
        info = task.info or probe(task.path)
        n_win = dense_windows(s, info.num_frames)
        first, stop = task.windows or (0, segment_windows(s))
        crops = dense_crops(s, info.num_frames, info.height, info.width, first, min(stop, n_win))
        dh, dw = decode_size(crops, info.height, info.width, s.input_size)
        needed = np.unique(np.concatenate([c.frames for c in crops]))
        notes: list[str] = []
        frames, decoded = decode_frames(task.path, needed, dh, dw, info.num_frames, notes)
        shape = (len(crops), s.clip_frames, s.input_size, s.input_size, 3)
        in_slot = out is not None and out.shape[1:] == shape[1:] and len(out) >= len(crops)
        out = out[: len(crops)] if in_slot else np.empty(shape, dtype=np.uint8)
        for i, c in enumerate(crops):
            out[i] = cut(np.stack([frames[int(f)] for f in c.frames]), c.box, c.flip, s.input_size)
    except VideoError as e:
        return DecodeResult(task.index, VideoMeta(status=FAILED, reason_code=int(e.code), reason=e.text))
    except Exception as e:  # anything unexpected still must not stop the run
        text = f"{type(e).__name__}: {e}"[:200]
        return DecodeResult(task.index, VideoMeta(FAILED, int(Reason.DECODE_ERROR), text))
    meta = VideoMeta(status=DONE, num_frames=info.num_frames, decoded_frames=decoded, fps=info.fps,
                     height=info.height, width=info.width, rotation=info.rotation)  # fmt: skip
    boxes = np.stack([c.box for c in crops]).astype(np.float32)
    flips = np.zeros(len(crops), dtype=bool)
    res = DecodeResult(task.index, meta, out, boxes, flips, info=info, notes=notes, in_slot=in_slot)
    res.total_rows, res.first_row = n_win * s.spatial, first * s.spatial
    if task.info is None:  # the first task of a video: the times of all its rows, and the probe
        res.times = row_times(info, dense_crops(s, info.num_frames, 1, 1, 0, n_win))
        res.probe = VideoInfo(**{**info.__dict__, "times": None})
    return res


def row_times(info: VideoInfo, crops) -> np.ndarray:
    """(rows, 2) start / end seconds of crops: the times of their first frame and of their span's end."""
    t = info.times if info.times is not None else np.full(info.num_frames + 1, np.nan)
    return np.array([[t[int(c.frames[0])], t[c.span_end]] for c in crops], dtype=np.float64).reshape(-1, 2)


def crop_shape(s: CropSettings) -> tuple[int, int, int, int, int]:
    """The shape of one video's crops (the size of a shared-memory slot): K of the mode (eval: clips x
    spatial crops, pairs: 2 x pairs, dense: one segment's crops), not the train-mode count."""
    return (s.slot_crops, s.clip_frames, s.input_size, s.input_size, 3)


def slot_shape(groups: tuple[CropSettings, ...]) -> tuple[int, ...]:
    """A slot for one video: its crops' shape for one crop set, else a flat buffer that holds every set."""
    shapes = [crop_shape(s) for s in groups]
    return shapes[0] if len(shapes) == 1 else (slot_bytes(shapes),)
