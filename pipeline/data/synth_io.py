"""The plumbing of `vcache synth` (pipeline/data/synth.py): noise, encoding, process pool, progress."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def _noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance float32 noise, uniform in [-sqrt(3), sqrt(3)].

    DESIGN.md gives the noise level (0.03), not its law; uniform is chosen here because it draws three
    times faster than `standard_normal` on this machine and the noise only has to keep frames from being
    exactly equal, not to follow a law.
    """
    noise = rng.random(shape, dtype=np.float32)
    noise -= 0.5
    noise *= np.float32(np.sqrt(12.0))
    return noise


def add_h264_stream(container, video: np.ndarray, fps: int, crf: int = 20, intra: bool = True):
    """The synthetic set's H.264 video stream on an open PyAV container: libx264, yuv420p, preset veryfast,
    one encoder thread (identical bytes run to run), every frame a key frame when `intra`."""
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height = video.shape[2], video.shape[1]
    stream.pix_fmt = "yuv420p"
    options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
    if intra:
        options["g"] = "1"
    stream.options = options
    return stream


def write_mp4(path: Path, video: np.ndarray, fps: int, crf: int = 20, intra: bool = True) -> None:
    """Encode frames (T, H, W, 3) uint8 RGB as H.264 (libx264, yuv420p) in an mp4 with PyAV.

    intra=True makes every frame a key frame (no quality drift along a GOP, frame-exact seeking); one
    encoder thread keeps the bytes identical from run to run.
    """
    import av

    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = add_h264_stream(container, video, fps, crf, intra)
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)  # a killed run leaves a .part file, never a truncated .mp4


@contextmanager
def _mapper(workers: int) -> Iterator[Callable]:
    """`map` in this process (workers <= 1) or an ordered map over a pool of spawned processes."""
    if workers <= 1:
        yield map
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the parent may run threads (rich's refresh thread) that fork would copy mid-lock.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield lambda fn, items: executor.map(fn, items, chunksize=4)


@contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar (nothing when disabled); yields a function that advances it by one video."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task_id = bar.add_task("synth videos", total=total)
        yield lambda: bar.advance(task_id)


def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty `out` unless overwrite; with overwrite, remove only what this command writes."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite (--overwrite) to replace its dataset")
        for sub in ("videos", "splits"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / "classes.json").unlink(missing_ok=True)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "splits").mkdir(parents=True, exist_ok=True)
