"""One decode of each video for several outputs: `vcache extract --backbone a,b,c` (issue 12).

An output is one backbone writing one store (an engine ``_Job``: its own store, lock, shard claims, batches
and shard buffers). The fan-out owns the decoding pool and the loop that claims shards, submits videos and
hands each decoded video to every output whose store still wants it; a single-backbone run is the same loop
with one output.

Crop sets: outputs whose crop settings are equal (clip frames, stride, input size, mode, seed ...) share one
set of crops; each distinct setting is a *group*. A decoding task names the groups its video is wanted for;
the worker decodes the frames any group needs once, at the largest size any group needs, and cuts each
group's crops from those frames (vcache.extract.workers). A video's shared-memory slot goes back to the pool
once every output that takes it has copied its crops into a batch (a reference count per video).

Claims: shard s is pending when any output's store has a pending video in it; the fan-out claims s in every
such store (each store keeps its own lock and claims, so torchrun and ``--part`` work as for one store) and
a video is decoded for the outputs whose store has it pending and whose claim succeeded. A video counts done
per store: a resume after a kill redoes, per store, only what that store lacks.
"""

from __future__ import annotations

import time
from typing import Any

from vcache.extract.output import ShardBuffer
from vcache.extract.workers import (
    DecodePool,
    DecodeResult,
    DecodeTask,
    crop_shape,
    slot_shape,
    split_crops,
)
from vcache.store import DONE, PENDING
from vcache.store.verify import reset_failed

_WAIT = -1  # from the claim generator: no new shard until a claimed one is written


class Fanout:
    """Drive the decoding pool for ``jobs`` (engine ``_Job`` objects, one per output)."""

    def __init__(self, jobs: list, opts: Any):
        self.jobs, self.opts = jobs, opts
        self.groups: list = []
        for j in jobs:
            if j.settings not in self.groups:
                self.groups.append(j.settings)
        self.group_of = [self.groups.index(j.settings) for j in jobs]
        self.k = jobs[0].settings.slot_crops
        if any(j.settings.k != jobs[0].settings.k for j in jobs):
            raise ValueError("every backbone of one run must cut the same number of crops per video")
        self.dense = jobs[0].settings.mode == "dense"
        if self.dense and len(jobs) > 1:
            raise ValueError("--mode dense takes one backbone a run (run one extraction per backbone)")
        self.needs: dict[int, list[int]] = {}  # video -> the outputs that take it (submitted, not taken)
        self.refs: dict[int, int] = {}  # video -> outputs still holding its crops in an unfinished batch
        self.slot_of: dict[int, int | None] = {}
        self.pool: DecodePool | None = None
        self.stop = jobs[0].stop

    # -- what each output's _Job calls back: a video's crops are in its batch now ---------------------------
    def release(self, video: int | None) -> None:
        if video is None:
            return
        self.refs[video] -= 1
        if self.refs[video] == 0:
            del self.refs[video]
            self.pool.release(self.slot_of.pop(video))

    def submit(self, task: DecodeTask) -> None:
        """Dense mode: a video's later segments, submitted by its output once the first is decoded."""
        self.pool.submit(task)

    def run(self, rank: int, world: int, progress, claims: list) -> None:
        for j, c in zip(self.jobs, claims, strict=True):
            j.progress, j.claims, j.open_shards, j.pool = progress, c, set(), self
        try:
            self._run(rank, world, progress)
        finally:  # a run that stops on an error gives its unwritten shards back at once
            for j in self.jobs:
                for s in list(j.open_shards):
                    j.claims.release(s)

    def _open_shards(self) -> int:
        return len(set().union(*(j.open_shards for j in self.jobs)))

    def _claimed_videos(self, rank: int, world: int):
        """Videos of the shards this process claims, claimed lazily as decoding needs work: its own share
        (s % world == rank) first, then any pending shard no live process holds. At most two claimed
        shards wait unwritten, so leftovers spread over every process instead of the first one there."""
        n = self.jobs[0].store.n_shards
        order = [s for s in range(n) if s % world == rank] + [s for s in range(n) if s % world != rank]
        for s in order:
            wanting = [i for i, j in enumerate(self.jobs) if j._pending(s)]
            if not wanting:
                continue
            while self._open_shards() >= 2:
                yield _WAIT  # let the claimed shards be written first
            need: dict[int, list[int]] = {}
            for i in wanting:
                j = self.jobs[i]
                if not j.claims.claim(s):
                    continue
                if not j._pending(s):  # written by another process between the check and the claim
                    j.claims.release(s)
                    continue
                j.open_shards.add(s)
                j.buffers[s] = ShardBuffer(j.store, s, j.map_shape)
                for v in j.buffers[s].preload(j.store, s):  # a stopped run's finished videos are kept
                    j.shard_of[v] = s
                    need.setdefault(v, []).append(i)
            for v in sorted(need):
                self.needs[v] = need[v]
                yield v

    def _task(self, v: int) -> DecodeTask:
        job, opts = self.jobs[0], self.opts
        path = job.paths[v]
        groups = sorted({self.group_of[i] for i in self.needs[v]})
        first, *more = (self.groups[g] for g in groups)
        return DecodeTask(v, str(job.root / path), path, first, opts.max_decode_errors, tuple(more))

    def _run(self, rank: int, world: int, progress) -> None:
        opts, jobs = self.opts, self.jobs
        if opts.retry_failed:
            for j in jobs:
                reset_failed(j.store, rank, world)
        if progress:
            done = sum(int((j.store.status() != PENDING).sum()) for j in jobs)
            progress("start", {"total": sum(j.store.n_videos for j in jobs), "done": done})
        in_flight_cap = max(2, 2 * opts.workers + 1)
        # slots: one per video in flight, plus the videos whose crops wait in each output's unfinished batch
        held = -(-(opts.batch_size - 1) // self.k) + 1
        n_slots = in_flight_cap + len(jobs) * held if opts.shared_memory else 0
        t_pool = time.perf_counter()
        waits = {"decode_wait": 0.0}
        with DecodePool(opts.workers, opts.timeout_s, slot_shape(tuple(self.groups)), n_slots) as pool:
            self.pool = pool
            for j in jobs:
                j.transport = pool.transport if opts.workers > 0 else "in process"
            queue = self._claimed_videos(rank, world)
            exhausted = False
            while not self.stop.requested:
                waiting = False
                while not exhausted and pool.pending() < in_flight_cap:
                    v = next(queue, None)
                    if v is None:
                        exhausted = True
                        break
                    if v == _WAIT:
                        waiting = True
                        break
                    pool.submit(self._task(v))
                if pool.pending() == 0:
                    if waiting:  # every claimed video is decoded: run the backbones, write, claim again
                        for j in jobs:
                            j._forward(flush=True)
                        continue
                    break
                t0 = time.perf_counter()
                results = pool.get(block=True, timeout=0.5)  # wakes to notice a stop request
                waits["decode_wait"] += time.perf_counter() - t0
                for res in results:
                    self._take(res)
            if self.stop.requested:  # take what is decoded already; the rest of the queue stays pending
                for res in pool.get(block=False):
                    self._take(res)
            for j in jobs:
                j._forward(flush=True)
            if self.stop.requested:  # the finished videos of each open shard, the rest stay pending
                for j in jobs:
                    for s in sorted(j.buffers):
                        j._write(s)
        # start-up: store, locks, claims, worker spawn and imports, until every first worker is ready
        ready = pool.ready_at if opts.workers > 0 and pool.ready_at is not None else t_pool
        for j in jobs:
            j.timings["decode_wait"] += waits["decode_wait"]  # shared: the wait of the one loop
            j.timings["startup"] = ready - j.t_start
            j.timings["startup_workers"] = ready - t_pool
            if j.buffers and not self.stop.requested:  # a shard lost a video: never write it half-done
                raise RuntimeError(
                    f"internal error: shards {sorted(j.buffers)} of {j.store.path} incomplete at the end "
                    "of the run"
                )

    def _take(self, res: DecodeResult) -> None:
        """Hand one decoded video to each output that wants it: its group's crops, boxes and flips."""
        if self.dense:  # one output; a video's segments each hold their own slot
            self.needs.pop(res.index, None)
            if res.slot is not None:
                key = -1 - res.slot
                self.refs[key], self.slot_of[key], res.slot = 1, res.slot, key
            self.jobs[0]._take(res)
            return
        v, need = res.index, self.needs.pop(res.index)
        if res.meta.status != DONE:
            for i in need:
                self.jobs[i]._take(res)
            return
        groups = sorted({self.group_of[i] for i in need})
        shapes = [crop_shape(self.groups[g]) for g in groups]
        crops = res.crops
        views = [crops] if crops.shape == shapes[0] else split_crops(crops.reshape(-1), shapes)
        if res.slot is not None:
            self.refs[v], self.slot_of[v] = len(need), res.slot
        k = self.k
        for i in need:
            g = groups.index(self.group_of[i])
            rows = slice(g * k, (g + 1) * k)
            part = DecodeResult(v, res.meta, views[g], res.boxes[rows], res.flips[rows], res.seconds)
            part.slot = v if res.slot is not None else None  # released through self.release
            part.times, part.total_rows = res.times[rows] if res.times is not None else None, k
            self.jobs[i]._take(part)
