"""Decoding worker processes with a per-video deadline (the hang guard).

Each worker decodes one video at a time: probe the trusted frame count, sample the crops, decode the frames
they need in order at the size they need, cut them. It sends back uint8 crops, never features, so workers
need neither torch nor the GPU and start fast (spawned, importing only numpy, PyAV and decord). A dense
video is one task per segment of windows; the first also probes and returns all its rows' times.

decord can hang in native code on a bad file. Each worker has its own task and result pipes, so the
parent knows which video each worker holds and since when: when a video passes its deadline the worker is
killed (which corrupts nothing shared), the video is recorded as failed "timed out", and a fresh worker
takes its place. A worker that dies (a native crash) is handled the same way.

Workers never outlive the process that started them, whatever signal ends it (SIGKILL included): on Linux
each worker asks the kernel for SIGKILL when its parent thread dies (prctl PR_SET_PDEATHSIG), and on every
platform a watch thread in the worker exits once its parent pid changes (re-parented: the parent is gone).
The parent-death signal fires when the *thread* that started the worker ends; workers are started by the
pool's constructor (the caller's thread) or by its manager thread, which lives until the pool is closed.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, wait

from vcache.data.records import FAILED, Reason, VideoMeta
from vcache.extract.decode import (  # noqa: F401  (re-exported: the decoding side of a worker)
    DecodeResult,
    DecodeTask,
    crop_shape,
    decode_task,
    row_times,
    slot_shape,
    split_crops,
)
from vcache.extract.slots import Attached, make_slots

_READY = "ready"
MAX_START_CRASHES = 3  # workers that die before they are ready, in a row, before the run gives up


class WorkerStartError(RuntimeError):
    """Decoding workers keep dying while they start (a broken environment): the run cannot go on."""


_FATAL = object()  # in the result queue: the pool gave up (see WorkerStartError)


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Make this worker end with its parent (see the module docstring)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the watch below still ends the worker
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="vcache-parent-watch", daemon=True).start()


def _worker_main(tasks: Connection, results: Connection, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    # Ctrl-C and torchrun's / a scheduler's SIGTERM reach the whole group: the parent decides (a graceful
    # stop); close() ends a worker with SIGKILL, and a dead parent ends it through _die_with_parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    attached = Attached()
    results.send(_READY)  # imports done: deadlines start counting only from here
    while True:
        try:
            msg = tasks.recv()
        except EOFError:
            return
        if msg is None:
            return
        task, slot_name = msg
        out = attached.array(slot_name, slot_shape(task.groups)) if slot_name else None
        res = decode_task(task, out)
        if res.in_slot:
            res.crops = None  # the parent reads them from the slot
        results.send(res)


class _Worker:
    def __init__(self, ctx: mp.context.BaseContext):
        self.tasks_r, self.tasks_w = ctx.Pipe(duplex=False)
        self.results_r, self.results_w = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(
            target=_worker_main, args=(self.tasks_r, self.results_w, os.getpid()), daemon=True
        )
        self.proc.start()
        # close the child's ends here, so that the child's death reads as EOF on results_r
        self.tasks_r.close()
        self.results_w.close()
        self.task: DecodeTask | None = None
        self.slot: int | None = None  # the shared-memory slot the current task decodes into
        self.since = 0.0
        self.ready = False

    def give(self, task: DecodeTask, slot: int | None, slot_name: str | None) -> None:
        self.task, self.slot, self.since = task, slot, time.monotonic()
        try:
            self.tasks_w.send((task, slot_name))
        except OSError:  # the worker is gone; get() sees EOF on its result pipe and replaces it
            pass

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(timeout=5)
        self.tasks_w.close()
        self.results_r.close()


class DecodePool:
    """Decode videos in `workers` processes (0: in this process, without a deadline).

    A manager thread hands tasks to idle workers, receives their results and enforces the deadlines, so
    results keep arriving while the caller runs the backbone (receiving a result in the caller's thread
    would leave the worker blocked on its pipe for the whole forward pass). submit() queues tasks; get()
    returns finished DecodeResults, timed-out or crashed videos as failed results.

    With `shape` (one video's crops) and `slots` > 0 the crops travel in shared-memory slots
    (vcache.extract.slots): a task is handed out only with a free slot, a done result's `crops` is a view of
    its slot, and the caller gives the slot back with release() once it has copied the crops. `transport`
    says which path is used ("shm", or "pipe" and why).
    """

    def __init__(
        self,
        workers: int = 1,
        timeout_s: float = 300.0,
        shape: tuple[int, ...] | None = None,
        slots: int = 0,
    ):
        self.timeout_s = timeout_s
        self.n_workers = workers
        self._tasks: deque[DecodeTask] = deque()
        self._results: queue.Queue[DecodeResult] = queue.Queue()
        self._outstanding = 0  # submitted, not yet returned by get()
        self._ctx = mp.get_context("spawn")
        self.slots, self.transport = make_slots(slots if workers > 0 else 0, shape)
        self.workers: list[_Worker] = [_Worker(self._ctx) for _ in range(workers)]
        self.replaced = 0
        self.ready_at: float | None = None  # perf_counter when the first workers were all ready
        self.start_crashes = 0  # in a row; reset when a worker becomes ready
        self.fatal: str | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = mp.Pipe(duplex=False)
        self._thread = threading.Thread(target=self._manage, name="vcache-decode-pool", daemon=True)
        if workers > 0:
            self._thread.start()

    def submit(self, task: DecodeTask) -> None:
        self._outstanding += 1
        if self.n_workers == 0:
            self._results.put(decode_task(task))
            return
        self._tasks.append(task)
        self._wake_w.send(None)

    def pending(self) -> int:
        return self._outstanding

    def release(self, slot: int | None) -> None:
        """The caller is done with a result's crops: its slot may take the next video."""
        if self.slots is not None and slot is not None:
            self.slots.release(slot)
            if self._tasks:
                self._wake_w.send(None)

    def get(self, block: bool = True, timeout: float | None = None) -> list[DecodeResult]:
        """Results that are ready; waits for at least one when `block` and work is outstanding (at most
        `timeout` seconds when given: then the list may be empty)."""
        out = []
        if block and self._outstanding:
            try:
                out.append(self._results.get(timeout=timeout))
            except queue.Empty:
                pass
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                break
        if self.fatal is not None:
            raise WorkerStartError(self.fatal)
        self._outstanding -= len(out)
        for res in out:
            if res.slot is not None:
                res.crops = self.slots.view(res.slot)
        return out

    # -- the manager thread -----------------------------------------------------------------------
    def _manage(self) -> None:
        while not self._stop.is_set():
            for w in self.workers:
                if w.ready and w.task is None and self._tasks:
                    slot = self.slots.acquire() if self.slots is not None else None
                    if self.slots is not None and slot is None:
                        break  # every slot holds crops the caller has not taken yet
                    w.give(self._tasks.popleft(), slot, None if slot is None else self.slots.names[slot])
            busy = {w.results_r: i for i, w in enumerate(self.workers) if w.task is not None}
            starting = {w.results_r: i for i, w in enumerate(self.workers) if not w.ready}
            timeout = 1.0
            if busy:
                deadline = min(self.workers[i].since for i in busy.values()) + self.timeout_s
                timeout = min(timeout, max(0.0, deadline - time.monotonic()))
            for c in wait([*busy, *starting, self._wake_r], timeout=timeout):
                if c is self._wake_r:
                    while self._wake_r.poll():
                        self._wake_r.recv()
                    continue
                if c in starting:
                    i = starting[c]
                    try:
                        self.workers[i].ready = c.recv() == _READY
                        self.start_crashes = 0
                        if self.ready_at is None and all(w.ready for w in self.workers):
                            self.ready_at = time.perf_counter()
                    except (EOFError, OSError):  # died while starting: start another, a few times
                        self.workers[i].kill()
                        self.start_crashes += 1
                        if self.start_crashes > MAX_START_CRASHES:
                            self._give_up(self.workers[i].proc.exitcode)
                            return
                        self.workers[i] = _Worker(self._ctx)
                    continue
                i = busy[c]
                try:
                    res = c.recv()
                    w = self.workers[i]
                    if res.in_slot:
                        res.slot = w.slot
                    elif self.slots is not None:
                        self.slots.release(w.slot)
                    w.task, w.slot = None, None
                except (EOFError, OSError):
                    code = self.workers[i].proc.exitcode
                    res = self._replace(i, Reason.WORKER_DIED, f"decoding process died (exit code {code})")
                self._results.put(res)
            now = time.monotonic()
            for i, w in enumerate(self.workers):
                if w.task is not None and now - w.since > self.timeout_s:
                    self._results.put(
                        self._replace(i, Reason.TIMED_OUT, f"timed out after {self.timeout_s:g} s")
                    )

    def _give_up(self, exitcode: int | None) -> None:
        self.fatal = (
            f"decoding workers crashed {self.start_crashes} times in a row while starting (last exit code "
            f"{exitcode}), so no video can be decoded: check that `python -c 'import numpy, av, decord'` "
            "works in this environment. Shards written before are kept; rerun the same command to resume"
        )
        self._results.put(_FATAL)  # wakes a caller blocked in get()

    def _replace(self, i: int, reason: Reason, text: str) -> DecodeResult:
        w = self.workers[i]
        task = w.task
        w.kill()  # joined: nothing writes into its slot any more
        if self.slots is not None:
            self.slots.release(w.slot)
        self.workers[i] = _Worker(self._ctx)
        self.replaced += 1
        meta = VideoMeta(status=FAILED, reason_code=int(reason), reason=text)
        return DecodeResult(task.index, meta, seconds=time.monotonic() - w.since)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._wake_w.send(None)
            self._thread.join(timeout=10)
        for w in self.workers:
            if w.task is None:
                try:
                    w.tasks_w.send(None)
                except OSError:
                    pass
                w.proc.join(timeout=2)
            if w.proc.is_alive():
                w.kill()
        self.workers = []
        if self.slots is not None:
            self.slots.close()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
