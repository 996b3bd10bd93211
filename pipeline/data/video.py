"""Video reading: trusted frame counts (PyAV packet index) and in-order decoding (decord).

No torch here: this module runs inside decoding worker processes that must start fast.

Frame counts. Container metadata (`nb_frames`, duration x fps) can be wrong, so `probe` counts the video
stream's packets by demuxing without decoding (one packet per frame for the codecs of the field's datasets:
H.264, MPEG-4, VP8/9 without superframes). Crops are sampled on that count.

Fewer frames than counted. If decoding stops early (truncated file, corrupt tail, a decoder that knows
fewer frames), every requested index at or past the first frame that fails to decode is served by the last
frame that did decode; `decoded_frames` records that limit. When less than `MIN_DECODED_FRACTION` of the
counted frames decode, the video fails with `Reason.DECODE_ERROR` instead.

Damage that does not fail a video is recorded, never hidden (`warnings_for`): the container's frame count
(or duration x fps) disagreeing with the counted packets (a truncated file, a lying header), frames that do
not decode, and the decoders' own messages. FFmpeg (inside decord and PyAV) prints those to the process's
stderr; `capture_stderr` catches them at the file-descriptor level around one video's decode, so they
become that video's `decode_errors` count and warning text instead of lines over the progress bar.

Rotation. Phone videos carry a display matrix. It is recorded (degrees counter-clockwise, read from the first
decoded frame) in `VideoInfo.rotation` and a warning, not applied: decord returns the pixels as stored, and
crops and features are computed on them.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from vcache.data.records import Reason

MIN_DECODED_FRACTION = 0.5
SEGMENT_FRAMES = 32  # frames decoded per decord call: bounds memory for long or large videos
# decord's get_batch seeks (back to a keyframe, then forward) at every index that does not follow the one
# before it, so strided clips (every 2nd frame) cost a seek a frame: 47 ms against 20 ms for all 64 frames
# of a 64-frame 64^2 video. Gaps up to this many frames are decoded through and the extra frames dropped.
GAP_FILL = 16


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
    duration: float = 0.0  # seconds, as the container says (0 if it does not)
    rotation: int = 0  # display matrix rotation, degrees counter-clockwise (recorded, not applied)
    times: np.ndarray | None = None  # (num_frames + 1,) seconds: frame i's presentation time, then the end


def frame_times(pts: list[int], durations: list[int], time_base: float, fps: float, n: int) -> np.ndarray:
    """Presentation time in seconds of each of the `n` frames (in presentation order: the packets' sorted
    pts, so variable frame rate and B-frames are right), relative to the first frame, plus the end of the
    last frame (its packet's duration, else the median frame gap). Packets without pts (some AVI): i / fps."""
    if len(pts) == n and n and time_base > 0:
        order = np.argsort(pts, kind="stable")
        p = np.asarray(pts, dtype=np.int64)[order]
        last = int(np.asarray(durations, dtype=np.int64)[order][-1])
        if last <= 0:
            last = int(np.median(np.diff(p))) if n > 1 else 0
        if last <= 0 and fps > 0:
            last = round(1 / (fps * time_base))
        return np.append(p - p[0], p[-1] - p[0] + max(last, 1)).astype(np.float64) * time_base
    return np.arange(n + 1, dtype=np.float64) / fps if fps > 0 else np.full(n + 1, np.nan)


def probe(path: str) -> VideoInfo:
    """Count the video stream's packets without decoding; raise VideoError for unusable files."""
    import av

    if not os.path.exists(path):
        if os.path.islink(path):
            raise VideoError(Reason.MISSING, "broken or looping symbolic link")
        raise VideoError(Reason.MISSING, "file not found")
    if os.path.isdir(path):
        raise VideoError(Reason.UNREADABLE, "a folder, not a video file")
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
            count, rotation, tries = 0, None, 0
            pts: list[int] = []
            durations: list[int] = []
            for packet in container.demux(stream):
                if packet.size > 0:
                    count += 1
                    if packet.pts is not None:
                        pts.append(packet.pts)
                        durations.append(packet.duration or 0)
                if rotation is None and tries < 8:  # the first decoded frame carries the display matrix
                    tries += 1
                    with contextlib.suppress(Exception):
                        for frame in packet.decode():
                            rotation = int(round(frame.rotation or 0)) % 360
                            break
            claimed = int(stream.frames or 0)
            duration = (
                float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
            )
            if not duration and container.duration:
                duration = container.duration / 1e6
            time_base = float(stream.time_base) if stream.time_base else 0.0
    except VideoError:
        raise
    except Exception as e:  # PyAV raises many types (InvalidDataError, OSError, ...)
        raise VideoError(Reason.UNREADABLE, f"{type(e).__name__}: {str(e)[:120]}") from e
    if count == 0 and claimed:
        raise VideoError(Reason.ZERO_FRAMES, f"the index lists {claimed} frames but the file holds no data")
    if count == 0:
        raise VideoError(Reason.ZERO_FRAMES, "video stream has no frames")
    if height <= 0 or width <= 0:
        raise VideoError(Reason.UNREADABLE, "video stream has no frame size")
    times = frame_times(pts, durations, time_base, float(rate), count)
    return VideoInfo(count, claimed, float(rate), height, width, duration, rotation or 0, times)


@contextlib.contextmanager
def capture_stderr(limit: int = 1 << 16) -> Iterator[list[str]]:
    """Send what is written to file descriptor 2 (FFmpeg's log) to a temporary file for the duration;
    the yielded list receives its non-empty lines (at most ``limit`` bytes read) on exit."""
    lines: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read(limit).decode("utf-8", "replace")
            lines += [ln.strip() for ln in text.splitlines() if ln.strip() and "\x1b" not in ln]


_ADDRESS = re.compile(r"\[([^\]@]+?) @ 0x[0-9a-f]+\]\s*")


def warnings_for(info: VideoInfo, decoded: int, messages: list[str]) -> list[str]:
    """The warnings of a video that decoded (see the module docstring), shortest first."""
    out = []
    claimed = info.container_frames
    if not claimed and info.duration and info.fps:
        claimed = round(info.duration * info.fps)
        if abs(claimed - info.num_frames) <= max(2, 0.05 * info.num_frames):
            claimed = info.num_frames  # durations are rounded; only a clear gap counts
    if claimed and claimed != info.num_frames:
        out.append(
            f"container says {claimed} frames, {info.num_frames} found (truncated file or wrong header)"
        )
    if decoded < info.num_frames:
        out.append(f"only {decoded} of {info.num_frames} frames decode")
    if info.rotation:
        out.append(f"display matrix rotates by {info.rotation} deg; features from the pixels as stored")
    if messages:
        distinct = list(dict.fromkeys(_ADDRESS.sub(r"\1: ", m) for m in messages))
        out.append(f"{len(messages)} decoder messages: " + " | ".join(distinct[:3]))
    return out


def decode_frames(
    path: str,
    indices: np.ndarray,
    height: int,
    width: int,
    counted: int,
    notes: list[str] | None = None,
) -> tuple[dict[int, np.ndarray], int]:
    """Decode the sorted unique frame `indices` at (height, width), in order, a segment at a time.

    Returns ({index: frame (h, w, 3) uint8}, decoded_frames). Indices past the decodable limit map to the
    last decoded frame (see the module docstring). Memory holds only the requested frames, never the video.
    When decord cannot open the file (it indexes every packet first, so a file cut mid-packet fails), PyAV
    decodes it instead, in one pass; `notes` then receives why.
    """
    frames: dict[int, np.ndarray] = {}
    limit = counted
    try:
        segments = _iter_segments(path, indices, height, width, counted)
        first = next(segments, None)
        segments = iter([first, *segments] if first is not None else [])
    except VideoError as e:
        if notes is not None:
            notes.append(f"decoded with PyAV ({e.text[:100]})")
        segments = _pyav_segments(path, indices, height, width)
    for idx, batch in segments:
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
    fetch = _fill_gaps(usable, GAP_FILL)
    keep = np.isin(fetch, usable)
    for s in range(0, len(fetch), SEGMENT_FRAMES):
        seg, k = fetch[s : s + SEGMENT_FRAMES], keep[s : s + SEGMENT_FRAMES]
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
            n = len(good)
            if k[:n].any():
                yield seg[:n][k[:n]], np.stack(good)[k[:n]]
            if n < len(seg):
                yield seg[n:], None  # the first frame that failed
                return
            continue  # the batch call failed but every frame read alone (seen on 1-pixel-wide video)
        yield seg[k], batch[k]
    if len(usable) < len(wanted):
        yield np.array([known]), None  # the decoder knows no frame from `known` on


def _fill_gaps(indices: np.ndarray, gap: int) -> np.ndarray:
    """The sorted `indices` with every gap of at most `gap` frames between two of them filled in."""
    if len(indices) < 2:
        return indices
    parts = [indices[:1]]
    for a, b in zip(indices[:-1], indices[1:], strict=True):
        parts.append(np.arange(a + 1, b + 1) if b - a <= gap + 1 else np.array([b]))
    return np.concatenate(parts).astype(np.int64)


def _pyav_segments(
    path: str, indices: np.ndarray, height: int, width: int
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """The requested frames decoded by PyAV in one pass, resized as they come; stops at the first error."""
    import av

    wanted, last = {int(i) for i in indices}, int(max(indices))
    got_idx, got, i = [], [], -1
    try:
        with av.open(path, metadata_errors="ignore") as c:
            for frame in c.decode(video=0):
                i += 1
                if i in wanted:
                    got_idx.append(i)
                    got.append(frame.to_ndarray(width=width, height=height, format="rgb24"))
                if i >= last:
                    break
    except Exception:
        pass  # a damaged tail: keep what decoded
    if got:
        yield np.array(got_idx), np.stack(got)
    if i < last:
        yield np.array([i + 1]), None


def _open_reader(path: str, height: int, width: int, probe_index: int):
    """A decord reader that resizes to about (height, width) at decode time.

    decord 0.6 fails to copy out frames of some resized widths ("The size must exactly match"; seen here at
    widths 2-4, 6, 8, 12, 16, 24, 48 and 72), so when the first frame does not come out, the next widths are
    tried: the crops use normalised boxes, so a pixel more or less changes nothing else. When none works
    (a 1-pixel-wide video), VideoError makes `decode_frames` decode with PyAV instead.
    """
    import decord

    for w in (width, width + 1, width + 2, width + 3):
        try:
            reader = decord.VideoReader(path, width=w, height=height, num_threads=1)
        except Exception as e:
            text = str(e).split("Error: ")[-1]  # without decord's time stamp and source line
            raise VideoError(Reason.UNREADABLE, f"decord cannot open: {text[:120]}") from e
        try:
            frame = reader.get_batch([min(probe_index, max(0, len(reader) - 1))]).asnumpy()
        except Exception:
            continue
        if frame.shape[1:] != (height, w, 3):
            continue
        reader.seek(0)
        return reader
    raise VideoError(Reason.UNREADABLE, f"decord gives no well-formed {height}x{width} frame")  # PyAV then
