"""The extraction engine: videos -> crops -> frozen backbone -> one feature row per crop in a store.

Decoding runs in worker processes (vcache.extract.workers) while this process runs the backbone on batches of
crops gathered across videos. Results are buffered per store shard and each shard is written whole, crops
first and status last (vcache.store), so a killed run resumes where it stopped by rerunning the same command.

Distributed: under torchrun (RANK / WORLD_SIZE set) or with `part=(i, n)`, processes claim pending shards
through the store's claim files (vcache.store.lock.ShardClaims), their own share s % n == i first and then
any leftover, so no two processes ever write one shard and a resume spreads its leftovers over every rank.
Rank 0 (or the first part to arrive) creates the store; the others wait for it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vcache.data.crops import CropSettings, dense_windows, segment_windows
from vcache.extract.options import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_TOO_MANY_FAILED,
    ExtractOptions,
    ExtractReport,
    StoreWriteError,
    torch_threads,
)
from vcache.extract.output import ShardBuffer, VideoTrack, clean_leftovers, open_or_create, store_attrs
from vcache.extract.ranks import Dist, dist_rank_world
from vcache.extract.stop import EXIT_CODES, GracefulStop
from vcache.extract.workers import DecodePool, DecodeResult, DecodeTask, crop_shape
from vcache.models import VideoBackbone
from vcache.runtime.devices import resolve_device, use_device
from vcache.store import (
    DONE,
    FAILED,
    PENDING,
    Reason,
)
from vcache.store.location import Remote, location
from vcache.store.lock import StoreLocked, claims_for, new_run_id, open_lock
from vcache.store.verify import damaged_shards, mark_for_repair, reset_failed


def extract(
    manifest: Any,
    out: str | Path,
    backbone: VideoBackbone,
    settings: CropSettings,
    opts: ExtractOptions,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> ExtractReport:
    """Run (or resume) extraction of `manifest` into the store at `out`. See the module docstring.

    `progress(event, info)` is called with event "start" (info: total, done), "video" (info: clips,
    failed) and "shard"; the CLI draws its progress bar from it.
    """
    t_start = time.perf_counter()
    out = location(out)  # a Path, or a Remote for a URL (s3://...)
    rank, world = dist_rank_world()
    dist = Dist(world, opts.barrier_timeout_s)
    if opts.part is not None:
        if world > 1:
            raise ValueError("--part cannot be combined with torchrun (each rank already takes a share)")
        if opts.overwrite:
            raise ValueError("--overwrite cannot be combined with --part: parts run independently")
        rank, world = opts.part
    device = resolve_device(opts.device)
    use_device(device)  # CUDA: this rank's GPU is the current one (caches, streams, AMP)
    backbone = backbone.to(device).eval()
    map_shape = backbone.map_shape(settings.clip_frames, settings.input_size) if opts.feature_maps else None
    attrs = store_attrs(backbone, settings, manifest, opts, map_shape, device.type)
    args = (out, list(manifest.paths), list(manifest.labels), settings.k, backbone.feature_dim, attrs, opts)
    run_id = dist.broadcast(opts.run_id or new_run_id())
    first = rank == 0 or not dist.active
    if first and opts.overwrite and (isinstance(out, Remote) or out.exists()):
        _check_unlocked(out, run_id)  # never delete a store that a live run is writing
        out.delete_all() if isinstance(out, Remote) else shutil.rmtree(out)
    store = lock = None
    if first:  # torchrun: rank 0 alone, before the others start writing
        store = open_or_create(*args, map_shape)
        lock = open_lock(out, (rank, world), run_id, store.n_shards)
        lock.acquire()
    try:
        cleaned = clean_leftovers(out, lock) if first else 0
        repaired = damaged_shards(store) if first and opts.repair else {}
        if repaired:
            mark_for_repair(store, sorted(repaired))
        dist.barrier()
        if store is None:
            store = open_or_create(*args, map_shape)
            lock = open_lock(out, (rank, world), run_id, store.n_shards)
            lock.acquire()
        job = _Job(store, manifest, backbone, settings, opts, device, map_shape)
        job.cleaned, job.repaired, job.t_start = cleaned, repaired, t_start
        threads = torch.get_num_threads()
        if device.type == "cpu":
            torch.set_num_threads(torch_threads(opts))
        try:
            with GracefulStop(announce=first) as job.stop:
                job.run(rank, world, progress, claims_for(lock))
        finally:
            job.timings["torch_threads"] = torch.get_num_threads()
            torch.set_num_threads(threads)
        if dist.active and not job.stop.requested:
            job.wait_for_claims()
    finally:
        if lock is not None:
            lock.release()
    dist.barrier()  # under torchrun, report on the whole store once every rank is finished
    return job.report(t_start)


def _check_unlocked(out, run_id: str) -> None:
    probe = open_lock(out, (0, 1), run_id, 1)
    for _, rec in probe.holders():
        if rec.get("run_id") != run_id and not probe.is_stale(rec):
            raise StoreLocked(
                f"--overwrite: {out} is being written by run {rec.get('run_id')} (host {rec.get('host')}, "
                f"pid {rec.get('pid')}); nothing was deleted. Stop that run first, or --force-unlock if it "
                "is dead"
            )


_WAIT = -1  # from the claim generator: no new shard until a claimed one is written


class _Job:
    """One process's share of an extraction: decode in workers, batch crops across videos, write shards."""

    def __init__(self, store, manifest, backbone, settings, opts, device, map_shape):
        self.store, self.backbone, self.settings, self.opts = store, backbone, settings, opts
        self.device, self.map_shape = device, map_shape
        self.root = Path(manifest.root)
        self.paths = store.paths()
        pre = backbone.preprocessing
        self.mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1, 1) * 255
        self.std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1, 1) * 255
        self.use_amp = opts.amp and device.type == "cuda"
        # maps cross to the host in the store's dtype (--fp32 must not round them to float16 on the way)
        self.map_dtype = torch.float32 if opts.feature_dtype == "float32" else torch.float16
        self.timings = {"decode_wait": 0.0, "forward": 0.0, "write": 0.0, "worker_decode": 0.0}
        self.failures: list[tuple[str, str]] = []
        self.warnings: list[tuple[str, str]] = []
        self.clips = self.finished = 0  # crops through the backbone, videos finished (done or failed)
        self.buffers: dict[int, ShardBuffer] = {}
        self.shard_of: dict[int, int] = {}
        # (video, its row of the first crop, uint8 crops, the result they came in, whether they end it)
        self.batch: list[tuple[int, int, np.ndarray, DecodeResult, bool]] = []
        self.batch_n = 0
        self.tracks: dict[int, VideoTrack] = {}  # videos decoded in part or whole, not finished yet
        self.progress: Callable[[str, dict[str, Any]], None] | None = None
        self.cleaned = 0
        self.repaired: dict[int, str] = {}
        self.open_shards: set[int] = set()  # claimed, not yet written
        self.claims = None  # ShardClaims or RemoteClaims
        self.pool: DecodePool | None = None
        self.transport = ""
        self.host: torch.Tensor | None = None  # the uint8 batch before the forward pass (see _forward)
        self.stop = GracefulStop(announce=False)  # extract() installs the signal handlers
        self.t_start = time.perf_counter()

    def _pending(self, s: int) -> bool:
        vids = self.store.shard_videos(s)
        return bool((self.store.group["videos/status"][vids.start : vids.stop] == PENDING).any())

    def _claimed_videos(self, rank: int, world: int):
        """Videos of the shards this process claims, claimed lazily as decoding needs work: its own share
        (s % world == rank) first, then any pending shard no live process holds. At most two claimed
        shards wait unwritten, so leftovers spread over every process instead of the first one there."""
        n = self.store.n_shards
        order = [s for s in range(n) if s % world == rank] + [s for s in range(n) if s % world != rank]
        for s in order:
            if not self._pending(s):
                continue
            while len(self.open_shards) >= 2:
                yield _WAIT  # let the claimed shards be written first
            if not self.claims.claim(s):
                continue
            if not self._pending(s):  # written by another process between the check and the claim
                self.claims.release(s)
                continue
            self.open_shards.add(s)
            self.buffers[s] = ShardBuffer(self.store, s, self.map_shape)
            for v in self.buffers[s].preload(self.store, s):  # a stopped run's finished videos are kept
                self.shard_of[v] = s
                yield v

    def wait_for_claims(self, poll_s: float = 0.5) -> None:
        """torchrun: wait until no live process holds a claim, so the last barrier is short."""
        while self.claims.live():
            time.sleep(poll_s)

    def run(self, rank: int, world: int, progress, claims) -> None:
        self.progress, self.claims, self.open_shards = progress, claims, set()
        try:
            self._run(rank, world)
        finally:  # a run that stops on an error gives its unwritten shards back at once
            for s in list(self.open_shards):
                claims.release(s)

    def _run(self, rank: int, world: int) -> None:
        store, opts, progress = self.store, self.opts, self.progress
        if opts.retry_failed:
            reset_failed(store, rank, world)
        if progress:
            done = int((store.status() != PENDING).sum())
            progress("start", {"total": store.n_videos, "done": done})
        in_flight_cap = max(2, 2 * opts.workers + 1)
        k = self.settings.slot_crops
        # slots: one per video in flight, plus the videos whose crops wait in an unfinished batch
        n_slots = in_flight_cap + -(-(opts.batch_size - 1) // k) + 1 if opts.shared_memory else 0
        self.t_pool = time.perf_counter()
        with DecodePool(opts.workers, opts.timeout_s, crop_shape(self.settings), n_slots) as pool:
            self.pool = pool
            self.transport = pool.transport if opts.workers > 0 else "in process"
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
                    path = self.paths[v]
                    task = DecodeTask(v, str(self.root / path), path, self.settings, opts.max_decode_errors)
                    pool.submit(task)
                if pool.pending() == 0:
                    if waiting:  # every claimed video is decoded: run the backbone, write, claim again
                        self._forward()
                        continue
                    break
                t0 = time.perf_counter()
                results = pool.get(block=True, timeout=0.5)  # wakes to notice a stop request
                self.timings["decode_wait"] += time.perf_counter() - t0
                for res in results:
                    self._take(res)
            if self.stop.requested:  # take what is decoded already; the rest of the queue stays pending
                for res in pool.get(block=False):
                    self._take(res)
            self._forward()
            if self.stop.requested:  # the finished videos of each open shard, the rest stay pending
                for s in sorted(self.buffers):
                    self._write(s)
        # start-up: store, locks, claims, worker spawn and imports, until every first worker is ready
        ready = pool.ready_at if opts.workers > 0 and pool.ready_at is not None else self.t_pool
        self.timings["startup"] = ready - self.t_start
        self.timings["startup_workers"] = ready - self.t_pool
        if self.buffers and not self.stop.requested:  # a shard lost a video: never write it half-done
            raise RuntimeError(
                f"internal error: shards {sorted(self.buffers)} incomplete at the end of the run"
            )

    def _take(self, res: DecodeResult) -> None:
        """A decoded video (or dense segment): queue its crops for the backbone. A dense video's first
        segment tells its row count and times; its other segments are submitted then."""
        self.timings["worker_decode"] += res.seconds
        v, track = res.index, self.tracks.get(res.index)
        more = res.probe is not None and res.boxes is not None and res.total_rows > len(res.boxes)
        if self.stop.requested and (res.meta.reason_code == Reason.WORKER_DIED or more):
            self.pool.release(res.slot)  # killed with the run's own stop, or a dense video with segments
            return  # still to decode: the video stays pending
        if track is None:
            if res.meta.status != DONE:
                self._finish(v, res.meta)
                return
            self.buffers[self.shard_of[v]].open_video(v, res.total_rows, res.times)
            track = self.tracks[v] = VideoTrack(res.meta)
            if res.probe is not None:
                track.tasks_left = self._submit_segments(v, res.probe)
        else:
            track.merge(res.meta)
        if res.meta.status != DONE or track.meta.status != DONE:
            self.pool.release(res.slot)  # a failed segment fails the whole video
            self._maybe_finish(v)
            return
        rows = self.buffers[self.shard_of[v]].rows[v]
        n = len(res.boxes)
        rows["boxes"][res.first_row : res.first_row + n] = res.boxes
        rows["flip"][res.first_row : res.first_row + n] = res.flips
        crops, first = res.crops[:n], 0
        res.crops = None
        track.queued += n
        while first < n:
            part = crops[first : first + self.opts.batch_size - self.batch_n]
            self.batch.append((v, res.first_row + first, part, res, first + len(part) == n))
            self.batch_n += len(part)
            first += len(part)
            if self.batch_n >= self.opts.batch_size:
                self._forward()

    def _submit_segments(self, v: int, info) -> int:
        """Dense mode: the decoding tasks of video v's windows after its first segment. Returns how many."""
        n_win, seg = dense_windows(self.settings, info.num_frames), segment_windows(self.settings)
        path = self.paths[v]
        for w0 in range(seg, n_win, seg):
            task = DecodeTask(v, str(self.root / path), path, self.settings, self.opts.max_decode_errors)
            task.windows, task.info = (w0, min(n_win, w0 + seg)), info
            self.pool.submit(task)
        return len(range(seg, n_win, seg))

    def _forward(self) -> None:
        if not self.batch:
            return
        t0 = time.perf_counter()
        parts = [c for _, _, c, _, _ in self.batch]
        n, shape = sum(len(c) for c in parts), parts[0].shape[1:]
        if self.host is None or self.host.shape[1:] != shape or len(self.host) < n:
            # one reused batch buffer, page-locked on CUDA for an async copy (free again after .cpu() below)
            pin = self.device.type == "cuda"
            self.host = torch.empty((max(n, self.opts.batch_size), *shape), dtype=torch.uint8, pin_memory=pin)
        np.concatenate(parts, out=self.host[:n].numpy())
        x = self.host[:n].to(self.device, non_blocking=True)
        x = (x.permute(0, 4, 1, 2, 3).float() - self.mean) / self.std  # (B, T, S, S, 3) -> (B, 3, T, S, S)
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.use_amp):
            pooled, fmap = self.backbone(x)
        pooled = pooled.float().cpu().numpy()
        fmaps = fmap.to(self.map_dtype).cpu().numpy() if self.map_shape else None
        self.timings["forward"] += time.perf_counter() - t0
        row = 0
        batch, self.batch, self.batch_n = self.batch, [], 0
        for v, r0, crops, res, last in batch:
            n = len(crops)
            rows = self.buffers[self.shard_of[v]].rows[v]
            rows["features"][r0 : r0 + n] = pooled[row : row + n]
            if fmaps is not None:
                rows["maps"][r0 : r0 + n] = fmaps[row : row + n]
            row += n
            if last:
                self.pool.release(res.slot)  # its crops are in x now
            self.tracks[v].queued -= n
            self._maybe_finish(v)
        self.clips += row

    def _maybe_finish(self, v: int) -> None:
        track = self.tracks[v]
        if track.tasks_left == 0 and track.queued == 0:
            del self.tracks[v]
            self._finish(v, track.meta)

    def _finish(self, v: int, meta) -> None:
        buf = self.buffers[self.shard_of[v]]
        if meta.status == DONE:
            if meta.warning:
                self.warnings.append((self.paths[v], meta.warning))
        else:
            self.failures.append((self.paths[v], f"{Reason(meta.reason_code).name.lower()}: {meta.reason}"))
        buf.metas[v - buf.videos.start] = meta
        self.finished += 1
        if self.progress:
            self.progress("video", {"clips": buf.n_rows(v) if meta.status == DONE else 0})
        if buf.complete:
            self._write(self.shard_of[v])

    def _write(self, s: int) -> None:
        """Write shard s (whole, or after a stop request its finished videos) and give its claim back."""
        buf = self.buffers.pop(s)
        t0 = time.perf_counter()
        try:
            a = buf.arrays()
            self.store.write_shard(
                s, a["features"], a["boxes"], a["flips"], buf.metas, a["maps"], a["times"], a["spans"]
            )
        except OSError as e:
            raise StoreWriteError(
                f"cannot write shard {s} to {self.store.path}: {e}. Shards written before are intact and "
                "marked done; free space or fix the path, then rerun the same command to resume"
            ) from e
        self.timings["write"] += time.perf_counter() - t0
        self.open_shards.discard(s)
        self.claims.release(s)
        if self.progress and buf.complete:
            self.progress("shard", {"shard": s})

    def report(self, t_start: float) -> ExtractReport:
        store = self.store
        status = store.status()
        n_failed = int((status == FAILED).sum())
        code = EXIT_OK if n_failed == 0 else EXIT_SOME_FAILED
        if n_failed / max(1, store.n_videos) > self.opts.max_failed_fraction:
            code = EXIT_TOO_MANY_FAILED
        code = EXIT_CODES.get(self.stop.signal_name, code)
        self.timings["total"] = time.perf_counter() - t_start
        self.timings["steady"] = self.timings["total"] - self.timings.get("startup", 0.0)
        self.timings["cleaned_leftovers"] = self.cleaned
        return ExtractReport(
            store=str(store.path),
            n_videos=store.n_videos,
            done=int((status == DONE).sum()),
            failed=n_failed,
            pending=int((status == PENDING).sum()),
            processed_now=self.finished,
            clips=self.clips,
            seconds=self.timings["total"],
            failures=self.failures,
            warnings=self.warnings,
            timings=self.timings,
            exit_code=code,
            repaired=self.repaired,
            transport=self.transport,
            stopped_by=self.stop.signal_name,
        )
