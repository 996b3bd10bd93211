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

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vcache.data.crops import CropSettings, dense_windows, segment_windows
from vcache.extract.fanout import Fanout
from vcache.extract.forward import BatchRunner
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
from vcache.extract.stop import EXIT_CODES, GracefulStop
from vcache.extract.workers import DecodeResult, DecodeTask
from vcache.models import VideoBackbone
from vcache.runtime.devices import resolve_device, use_device
from vcache.store import DONE, FAILED, PENDING, FeatureStore, Reason
from vcache.store.location import Remote, location
from vcache.store.lock import StoreLocked, claims_for, new_run_id, open_lock
from vcache.store.verify import damaged_shards, mark_for_repair


def dist_rank_world() -> tuple[int, int]:
    """This process's share under torchrun (RANK, WORLD_SIZE), else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class _Dist:
    """torchrun's process group (gloo: extraction only needs barriers and one broadcast). ``timeout_s``
    bounds the first barrier, where ranks wait for rank 0 to delete (--overwrite) or create the store;
    the last one comes after every rank saw no live claim left, so it is short."""

    def __init__(self, world: int, timeout_s: float):
        self.active = world > 1 and "MASTER_ADDR" in os.environ
        if self.active:
            import datetime

            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
            self.dist = dist

    def barrier(self) -> None:
        if self.active:
            self.dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        if not self.active:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]


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
    return extract_many(manifest, [(out, backbone, settings)], opts, progress)[0]


def extract_many(
    manifest: Any,
    outputs: list[tuple[str | Path, VideoBackbone, CropSettings]],
    opts: ExtractOptions,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> list[ExtractReport]:
    """Several backbones from one decode of each video: `outputs` are (store, backbone, crop settings),
    one report each (vcache.extract.fanout). With one output this is :func:`extract`. Progress counts a
    video once per store."""
    t_start = time.perf_counter()
    outs = [location(o) for o, _, _ in outputs]  # a Path, or a Remote for a URL (s3://...)
    if len({str(o) for o in outs}) < len(outs):
        raise ValueError("two backbones of one run would write the same store")
    rank, world = dist_rank_world()
    dist = _Dist(world, opts.barrier_timeout_s)
    if opts.part is not None:
        if world > 1:
            raise ValueError("--part cannot be combined with torchrun (each rank already takes a share)")
        if opts.overwrite:
            raise ValueError("--overwrite cannot be combined with --part: parts run independently")
        rank, world = opts.part
    device = resolve_device(opts.device)
    use_device(device)  # CUDA: this rank's GPU is the current one (caches, streams, AMP)
    specs = []  # (backbone, settings, map_shape, open_or_create's arguments) per output
    for out, (_, backbone, settings) in zip(outs, outputs, strict=True):
        backbone = backbone.to(device).eval()
        map_shape = None
        if opts.feature_maps:
            map_shape = backbone.map_shape(settings.clip_frames, settings.input_size)
        attrs = store_attrs(backbone, settings, manifest, opts, map_shape, device.type)
        paths, labels = list(manifest.paths), list(manifest.labels)
        args = (out, paths, labels, settings.k, backbone.feature_dim, attrs, opts, map_shape)
        specs.append((backbone, settings, map_shape, args))
    run_id = dist.broadcast(opts.run_id or new_run_id())
    first = rank == 0 or not dist.active
    if first and opts.overwrite:
        doomed = [o for o in outs if isinstance(o, Remote) or o.exists()]
        for out in doomed:  # never delete a store that a live run is writing (checked before any goes)
            _check_unlocked(out, run_id)
        for out in doomed:
            out.delete_all() if isinstance(out, Remote) else shutil.rmtree(out)
    stores: list[FeatureStore] = []
    locks: list = []

    def open_all() -> None:
        for _, _, _, args in specs:
            stores.append(open_or_create(*args))
            lock = open_lock(args[0], (rank, world), run_id, stores[-1].n_shards)
            lock.acquire()  # refused: not in `locks`, so the finally below never removes the holder's lock
            locks.append(lock)

    try:
        cleaned, repaired = [0] * len(outs), [{} for _ in outs]
        if first:  # torchrun: rank 0 alone, before the others start writing
            open_all()
            cleaned = [clean_leftovers(o, lk) for o, lk in zip(outs, locks, strict=True)]
            if opts.repair:
                repaired = [damaged_shards(st) for st in stores]
            for st, rep in zip(stores, repaired, strict=True):
                if rep:
                    mark_for_repair(st, sorted(rep))
        dist.barrier()
        if not stores:
            open_all()
        if len({st.n_shards for st in stores}) > 1:
            raise ValueError("every store of one run must have the same shards (same --videos-per-shard)")
        stop = GracefulStop(announce=first)
        jobs = []
        for i, (backbone, settings, map_shape, _) in enumerate(specs):
            job = _Job(stores[i], manifest, backbone, settings, opts, device, map_shape)
            job.cleaned, job.repaired, job.t_start, job.stop = cleaned[i], repaired[i], t_start, stop
            jobs.append(job)
        fan = Fanout(jobs, opts)
        threads = torch.get_num_threads()
        if device.type == "cpu":
            torch.set_num_threads(torch_threads(opts))
        try:
            with stop:
                fan.run(rank, world, progress, [claims_for(lk) for lk in locks])
        finally:
            for job in jobs:
                job.runner.close()
                job.timings["torch_threads"] = torch.get_num_threads()
            torch.set_num_threads(threads)
        if dist.active and not stop.requested:
            for job in jobs:
                job.wait_for_claims()
    finally:
        for lock in locks:
            lock.release()
    dist.barrier()  # under torchrun, report on the whole store once every rank is finished
    return [job.report(t_start) for job in jobs]


def _check_unlocked(out, run_id: str) -> None:
    probe = open_lock(out, (0, 1), run_id, 1)
    for _, rec in probe.holders():
        if rec.get("run_id") != run_id and not probe.is_stale(rec):
            raise StoreLocked(
                f"--overwrite: {out} is being written by run {rec.get('run_id')} (host {rec.get('host')}, "
                f"pid {rec.get('pid')}); nothing was deleted. Stop that run first, or --force-unlock if it "
                "is dead"
            )


class _Job:
    """One process's share of an extraction: decode in workers, batch crops across videos, write shards."""

    def __init__(self, store, manifest, backbone, settings, opts, device, map_shape):
        self.store, self.backbone, self.settings, self.opts = store, backbone, settings, opts
        self.device, self.map_shape = device, map_shape
        self.root = Path(manifest.root)
        self.paths = store.paths()
        # maps cross to the host in the store's dtype (--fp32 must not round them to float16 on the way)
        map_dtype = torch.float32 if opts.feature_dtype == "float32" else torch.float16
        self.runner = BatchRunner(backbone, device, opts, map_shape, map_dtype)
        self.inflight = None  # a launched batch not yet collected (overlap)
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
        self.pool: Fanout | None = None  # gives a video's slot back once every backbone has its crops
        self.transport = ""
        self.stop = GracefulStop(announce=False)  # extract() installs the signal handlers
        self.t_start = time.perf_counter()

    def _pending(self, s: int) -> bool:
        vids = self.store.shard_videos(s)
        return bool((self.store.group["videos/status"][vids.start : vids.stop] == PENDING).any())

    def wait_for_claims(self, poll_s: float = 0.5) -> None:
        """torchrun: wait until no live process holds a claim, so the last barrier is short."""
        while self.claims.live():
            time.sleep(poll_s)

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

    def _forward(self, flush: bool = False) -> None:
        """Start the batch in hand, then collect the batch before it: with overlap (vcache.extract.forward)
        a batch is collected only once the next one runs, or when `flush` asks for everything now."""
        launched = None
        if self.batch:
            t0 = time.perf_counter()
            handle = self.runner.launch([c for _, _, c, _, _ in self.batch])
            for *_, res, last in self.batch:
                if last:
                    self.pool.release(res.slot)  # its crops are in the host buffer now
            batch, self.batch, self.batch_n = [(v, r, len(c)) for v, r, c, _, _ in self.batch], [], 0
            launched = (handle, batch)
            self.timings["forward"] += time.perf_counter() - t0
        if self.inflight is not None:
            self._collect(*self.inflight)
            self.inflight = None
        if launched is not None:
            if self.runner.overlap and not flush:
                self.inflight = launched
            else:
                self._collect(*launched)

    def _collect(self, handle, batch: list[tuple[int, int, int]]) -> None:
        pooled, fmaps, waited = self.runner.result(handle)
        self.timings["forward"] += waited
        row = 0
        for v, r0, n in batch:
            rows = self.buffers[self.shard_of[v]].rows[v]
            rows["features"][r0 : r0 + n] = pooled[row : row + n]
            if fmaps is not None:
                rows["maps"][r0 : r0 + n] = fmaps[row : row + n]
            row += n
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
