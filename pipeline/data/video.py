"""Video reading: trusted frame counts (PyAV packet index) and in-order decoding (decord).

No torch here: this module runs inside decoding worker processes that must start fast.

Frame counts. Container metadata (`nb_frames`, duration x fps) can be wrong, so `probe` counts the video
stream's packets by demuxing without decoding (one packet per frame for the codecs of the field's datasets:
H.264, MPEG-4, VP8/9 without superframes). Crops are sampled on that count.

Fewer frames than counted. If decoding stops early (truncated file, corrupt tail, a decoder that knows
fewer frames), every requested index at or past the first frame that fails to decode is served by the last
frame that did decode; `decoded_frames` records that limit. When less than `MIN_DECODED_FRACTION` of the
counted frames decode, the video fails with `Reason.DECODE_ERROR` instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from vcache.data.records import Reason

MIN_DECODED_FRACTION = 0.5
SEGMENT_FRAMES = 32  # frames decoded per decord call: bounds memory for long or large videos


class VideoError(Exception):
    """A video that cannot be used; carries a fixed `Reason` code and a short text."""

    def __init__(self, code: Reason, text: str):
        super().__init__(f"{code.name.lower()}: {text}")
        self.code = code
        self.text = text


@dataclass
class VideoInfo:
    num_frames: int  # counted from the packet index
    container_frames: int  # what the container claims (0 if it does not say)
    fps: float
    height: int
    width: int


def probe(path: str) -> VideoInfo:
    """Count the video stream's packets without decoding; raise VideoError for unusable files."""
    import av

    if not os.path.exists(path):
        raise VideoError(Reason.MISSING, "file not found")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise VideoError(Reason.UNREADABLE, "empty file")
    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.video:
                raise VideoError(Reason.NO_VIDEO_STREAM, "no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            height, width = int(ctx.height or 0), int(ctx.width or 0)
            rate = stream.average_rate or stream.guessed_rate or 0
            count = 0
            for packet in container.demux(stream):
                if packet.size > 0:
                    count += 1
            claimed = int(stream.frames or 0)
    except VideoError:
        raise
    except Exception as e:  # PyAV raises many types (InvalidDataError, OSError, ...)
        raise VideoError(Reason.UNREADABLE, f"{type(e).__name__}: {str(e)[:120]}") from e
    if count == 0:
        raise VideoError(Reason.ZERO_FRAMES, "video stream has no frames")
    if height <= 0 or width <= 0:
        raise VideoError(Reason.UNREADABLE, "video stream has no frame size")
    return VideoInfo(count, claimed, float(rate), height, width)


def decode_frames(
    path: str, indices: np.ndarray, height: int, width: int, counted: int
) -> tuple[dict[int, np.ndarray], int]:
    """Decode the sorted unique frame `indices` at (height, width), in order, a segment at a time.

    Returns ({index: frame (h, w, 3) uint8}, decoded_frames). Indices past the decodable limit map to the
    last decoded frame (see the module docstring). Memory holds only the requested frames, never the video.
    """
    frames: dict[int, np.ndarray] = {}
    limit = counted
    for idx, batch in _iter_segments(path, indices, height, width, counted):
        if batch is None:  # decoding failed at idx[0]: nothing from here on
            limit = int(idx[0])
            break
        for i, f in zip(idx, batch, strict=True):
            frames[int(i)] = f
    if not frames:
        raise VideoError(Reason.DECODE_ERROR, "no frame could be decoded")
    if limit < MIN_DECODED_FRACTION * counted:
        raise VideoError(Reason.DECODE_ERROR, f"only {limit} of {counted} counted frames decode")
    last = frames[max(frames)]
    for i in indices:
        if int(i) not in frames:
            below = [j for j in frames if j <= i]
            frames[int(i)] = frames[max(below)] if below else last
    return frames, min(limit, counted)


def _iter_segments(
    path: str, indices: np.ndarray, height: int, width: int, counted: int
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    reader = _open_reader(path, height, width, int(indices[0]) if len(indices) else 0)
    known = min(len(reader), counted)
    wanted = np.asarray(indices, dtype=np.int64)
    usable = wanted[wanted < known]
    for s in range(0, len(usable), SEGMENT_FRAMES):
        seg = usable[s : s + SEGMENT_FRAMES]
        try:
            batch = reader.get_batch(seg.tolist()).asnumpy()
        except Exception:
            # find the first frame of this segment that fails, keep those before it
            good = []
            for i in seg:
                try:
                    good.append(reader[int(i)].asnumpy())
                except Exception:
                    break
            if good:
                yield seg[: len(good)], np.stack(good)
            yield seg[len(good) :], None  # the first frame that failed
            return
        yield seg, batch
    if len(usable) < len(wanted):
        yield np.array([known]), None  # the decoder knows no frame from `known` on


def _open_reader(path: str, height: int, width: int, probe_index: int):
    """A decord reader that resizes to about (height, width) at decode time.

    decord 0.6 fails to copy out frames of some resized widths ("The size must exactly match"; seen here at
    widths 2-4, 6, 8, 12, 16, 24, 48 and 72), so when the first frame does not come out, the next widths are
    tried: the crops use normalised boxes, so a pixel more or less changes nothing else.
    """
    import decord

    for w in (width, width + 1, width + 2, width + 3):
        try:
            reader = decord.VideoReader(path, width=w, height=height, num_threads=1)
        except Exception as e:
            raise VideoError(Reason.UNREADABLE, f"decord cannot open: {str(e)[:120]}") from e
        try:
            frame = reader.get_batch([min(probe_index, max(0, len(reader) - 1))]).asnumpy()
        except Exception:
            continue
        if frame.shape[-1] != 3:
            continue
        reader.seek(0)
        return reader
    return decord.VideoReader(path, width=width, height=height, num_threads=1)  # fails later, with a reason
