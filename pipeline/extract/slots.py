"""Shared-memory slots: the decoded crops of one video cross from a worker to the engine without a copy.

The pool (parent process) creates a fixed set of POSIX shared-memory segments, one video's crops each
(K x T x S x S x 3 uint8). Each task is handed to a worker with a free slot's name; the worker decodes
straight into the slot and answers through its pipe with the small result record only (status, boxes,
flips, timings). The engine reads the crops as a numpy view of the slot, copies them into its batch (the
copy it makes anyway to assemble a batch across videos) and hands the slot back.

Lifetime: only the parent creates and unlinks segments. A worker that dies or is killed at its deadline
just loses its slot's contents; the parent kills and joins it before the slot is reused. The pool unlinks
every segment when it closes (a normal end, an exception, Ctrl-C); if the parent itself is SIGKILLed,
multiprocessing's resource tracker (a separate process that outlives it) unlinks the segments it created.
Segment names start with ``vcache-<pid>-`` so a leak is easy to spot in /dev/shm.

Where /dev/shm cannot hold the slots (a container's default 64 MB, for instance) the pool falls back to
sending the crops through the pipes and says so (``DecodePool.transport``): writing past a full tmpfs would
kill the worker with SIGBUS instead.
"""

from __future__ import annotations

import os
import secrets
import threading
from multiprocessing import shared_memory

import numpy as np

SHM_DIR = "/dev/shm"
PREFIX = "vcache-"


def shm_free_bytes() -> int | None:
    """Free bytes on the tmpfs behind POSIX shared memory (None where there is no such folder)."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class Slots:
    """``count`` shared-memory segments of ``shape`` uint8 each, handed out and back under a lock."""

    def __init__(self, count: int, shape: tuple[int, ...]):
        self.shape = tuple(int(d) for d in shape)
        self.nbytes = int(np.prod(self.shape))
        token = secrets.token_hex(3)
        self.segments: list[shared_memory.SharedMemory] = []
        try:
            for i in range(count):
                name = f"{PREFIX}{os.getpid()}-{token}-{i}"
                self.segments.append(shared_memory.SharedMemory(name=name, create=True, size=self.nbytes))
        except BaseException:
            self.close()
            raise
        self.names = [s.name for s in self.segments]
        self._free = list(range(count))[::-1]
        self._lock = threading.Lock()

    def acquire(self) -> int | None:
        with self._lock:
            return self._free.pop() if self._free else None

    def release(self, i: int | None) -> None:
        if i is None:
            return
        with self._lock:
            if i not in self._free:
                self._free.append(i)

    def free(self) -> int:
        with self._lock:
            return len(self._free)

    def view(self, i: int) -> np.ndarray:
        return np.ndarray(self.shape, dtype=np.uint8, buffer=self.segments[i].buf)

    def close(self) -> None:
        """Unmap and unlink every segment (views still alive keep their mapping until they go)."""
        for s in self.segments:
            try:
                s.close()
            except BufferError:  # a numpy view still refers to it (an error path): unlink anyway
                pass
            try:
                s.unlink()
            except FileNotFoundError:
                pass
        self.segments = []


def make_slots(count: int, shape: tuple[int, ...] | None) -> tuple[Slots | None, str]:
    """Slots when /dev/shm has room for them (with half its free space to spare), else None and why."""
    if shape is None or count <= 0:
        return None, "pipe"
    need = count * int(np.prod(shape))
    free = shm_free_bytes()
    if free is None or need > free // 2:
        return (
            None,
            f"pipe (shared memory: {need / 2**20:.0f} MiB needed, {(free or 0) / 2**20:.0f} MiB free)",
        )
    try:
        return Slots(count, shape), "shm"
    except OSError as e:
        return None, f"pipe (shared memory: {e})"


class Attached:
    """A worker's side: the segments it was told to write into, opened once each and kept."""

    def __init__(self) -> None:
        self._open: dict[str, shared_memory.SharedMemory] = {}

    def array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        seg = self._open.get(name)
        if seg is None:
            seg = self._open[name] = shared_memory.SharedMemory(name=name)
        return np.ndarray(shape, dtype=np.uint8, buffer=seg.buf)


def slot_bytes(shapes: list[tuple[int, ...]]) -> int:
    return sum(int(np.prod(sh)) for sh in shapes)


def split_crops(flat: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Views of each crop set in a flat buffer (slot_shape's layout: the sets one after another)."""
    views, at = [], 0
    for sh in shapes:
        n = int(np.prod(sh))
        views.append(flat[at : at + n].reshape(sh))
        at += n
    return views
