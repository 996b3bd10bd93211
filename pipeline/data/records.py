"""Per-video status records shared by the store and the decoding workers (no zarr, no torch here)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

PENDING, DONE, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}


class Reason(enum.IntEnum):
    """Fixed failure codes; the store also keeps a short free text per failed video."""

    OK = 0
    MISSING = 1  # the path does not exist
    UNREADABLE = 2  # the container could not be opened or parsed
    NO_VIDEO_STREAM = 3  # e.g. an audio-only file
    ZERO_FRAMES = 4  # a video stream with no frame
    DECODE_ERROR = 5  # the decoder failed part-way and too little decoded
    TIMED_OUT = 6  # decoding passed its deadline (worker killed)
    WORKER_DIED = 7  # the decoding process crashed
    BACKBONE_ERROR = 8  # the forward pass failed on this video's crops


@dataclass
class VideoMeta:
    """What a finished video writes into the per-video arrays."""

    status: int
    reason_code: int = 0
    reason: str = ""
    num_frames: int = 0
    decoded_frames: int = 0
    fps: float = 0.0
    height: int = 0
    width: int = 0
    decode_errors: int = 0  # decoder messages while decoding this video (captured, never printed)
    warning: str = ""  # done but damaged: what is wrong (truncated, decoder errors, rotation)
    rotation: int = 0  # display matrix, degrees counter-clockwise (recorded, not applied)
