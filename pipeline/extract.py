"""The extraction engine: videos -> crops -> frozen backbone -> one feature row per crop in a store.

Decoding runs in worker processes (vcache.workers) while this process runs the backbone on batches of
crops gathered across videos. Results are buffered per store shard and each shard is written whole, crops
first and status last (vcache.store), so a killed run resumes where it stopped by rerunning the same command.

Distributed: under torchrun (RANK / WORLD_SIZE set) or with `part=(i, n)`, a process takes the shards
s with s % n == i; no two processes ever write one shard. Rank 0 (or the first part to arrive) creates the
store; the others wait for it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vcache
from vcache.backbones import VideoBackbone, describe
from vcache.crops import CropSettings
from vcache.store import (
    DONE,
    FAILED,
    PENDING,
    FeatureStore,
    Reason,
    StoreError,
    VideoMeta,
    create_store,
    open_store,
)
from vcache.workers import DecodePool, DecodeResult, DecodeTask

EXIT_OK, EXIT_SOME_FAILED, EXIT_TOO_MANY_FAILED = 0, 3, 4


@dataclass
class ExtractOptions:
    init_seed: int | None = None  # seed a random-init backbone was built with (recorded in the store)
    batch_size: int = 32  # crops per forward pass
    workers: int = 1  # decoding processes; 0 decodes in this process (no deadline)
    timeout_s: float = 300.0  # per-video decoding deadline
    device: str = "auto"
    amp: bool = True  # autocast on CUDA
    feature_maps: bool = False
    feature_dtype: str = "float16"
    videos_per_shard: int = 64
    overwrite: bool = False
    retry_failed: bool = False
    max_failed_fraction: float = 0.1
    part: tuple[int, int] | None = None  # (index, count): a static share of the shards


@dataclass
class ExtractReport:
    store: str
    n_videos: int
    done: int
    failed: int
    pending: int
    processed_now: int
    clips: int
    seconds: float
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of this run's failures
    timings: dict[str, float] = field(default_factory=dict)
    exit_code: int = EXIT_OK


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(device)


def dist_rank_world() -> tuple[int, int]:
    """This process's share under torchrun (RANK, WORLD_SIZE), else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def store_attrs(
    backbone: VideoBackbone, settings: CropSettings, manifest: Any, opts: ExtractOptions, map_shape
) -> dict[str, Any]:
    """Everything needed to use a store without the command line that made it."""
    bb = describe(backbone)
    if opts.init_seed is not None and not bb.get("checkpoint"):
        bb["init_seed"] = opts.init_seed
    return {
        "backbone": bb,
        "sampling": settings.to_dict(),
        "manifest": manifest.to_dict(),
        "class_names": list(manifest.class_names),
        "video_root": str(Path(manifest.root).resolve()),
        "feature_maps": bool(opts.feature_maps),
        "vcache_version": vcache.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "created_on": socket.gethostname(),
    }


# Attributes that must match for a rerun to append to an existing store.
_MUST_MATCH = ("backbone", "sampling", "manifest_hash", "feature_dim", "feature_dtype", "map_shape")


def _comparable(attrs: dict[str, Any]) -> dict[str, Any]:
    out = {k: attrs.get(k) for k in _MUST_MATCH}
    out["backbone"] = {k: v for k, v in (attrs.get("backbone") or {}).items() if k != "checkpoint"}
    return out


def open_or_create(
    out: Path,
    paths: list[str],
    labels: list[int],
    k: int,
    feature_dim: int,
    attrs: dict[str, Any],
    opts: ExtractOptions,
    map_shape,
    is_creator: bool,
) -> FeatureStore:
    """Open `out` to resume it, or create it; refuse to append with different settings."""
    exists = (out / "zarr.json").exists()
    if exists and opts.overwrite and is_creator:
        import shutil

        shutil.rmtree(out)
        exists = False
    if not exists:
        if not is_creator:
            return _wait_for_store(out)
        return create_store(
            out,
            paths,
            labels,
            k,
            feature_dim,
            attrs,
            videos_per_shard=opts.videos_per_shard,
            feature_dtype=opts.feature_dtype,
            map_shape=map_shape,
        )
    store = open_store(out, mode="r+")
    from vcache.store import manifest_hash

    want = dict(attrs)
    want.update(
        manifest_hash=manifest_hash(paths, labels),
        feature_dim=feature_dim,
        feature_dtype=opts.feature_dtype,
        map_shape=list(map_shape) if map_shape else None,
    )
    import json

    have_c, want_c = _comparable(store.attrs), json.loads(json.dumps(_comparable(want)))
    diff = [key for key in have_c if have_c[key] != want_c[key]]
    if diff:
        raise StoreError(
            f"{out} was made with different settings ({', '.join(diff)} differ); "
            "rerun with the same options to resume, --overwrite to start again, or choose another --out"
        )
    return store


def _wait_for_store(out: Path, timeout_s: float = 600.0) -> FeatureStore:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if (out / "crops" / "flip" / "zarr.json").exists():
            try:
                return open_store(out, mode="r+")
            except StoreError:
                pass
        time.sleep(0.2)
    raise StoreError(f"{out}: the creating process did not make the store within {timeout_s:g} s")


class _ShardBuffer:
    """Rows of one shard, filled as videos finish; written whole when every video is in."""

    def __init__(self, store: FeatureStore, shard: int, map_shape):
        self.videos = store.shard_videos(shard)
        k, n = store.crops_per_video, len(self.videos)
        self.features = np.zeros((n * k, store.feature_dim), dtype=np.float32)
        self.boxes = np.full((n * k, 6), -1.0, dtype=np.float32)
        self.flips = np.zeros(n * k, dtype=bool)
        self.maps = np.zeros((n * k, *map_shape), dtype=np.float16) if map_shape else None
        self.metas: list[VideoMeta | None] = [None] * n
        self.k = k

    def rows(self, video: int) -> slice:
        i = video - self.videos.start
        return slice(i * self.k, (i + 1) * self.k)

    @property
    def complete(self) -> bool:
        return all(m is not None for m in self.metas)


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
    out = Path(out)
    rank, world = dist_rank_world()
    if opts.part is not None:
        if world > 1:
            raise ValueError("--part cannot be combined with torchrun (each rank already takes a share)")
        rank, world = opts.part
    device = resolve_device(opts.device)
    backbone = backbone.to(device).eval()
    pre = backbone.preprocessing
    map_shape = backbone.map_shape(settings.clip_frames, settings.input_size) if opts.feature_maps else None
    attrs = store_attrs(backbone, settings, manifest, opts, map_shape)
    store = open_or_create(
        out,
        list(manifest.paths),
        list(manifest.labels),
        settings.k,
        backbone.feature_dim,
        attrs,
        opts,
        map_shape,
        is_creator=rank == 0,
    )
    cleaned = store.clean_partial_files() if rank == 0 else 0
    if opts.retry_failed:
        _reset_failed(store, rank, world)
    shards = [s for s in store.pending_shards() if s % world == rank]
    status = store.status()
    todo = [v for s in shards for v in store.shard_videos(s)]
    if progress:
        progress(
            "start", {"total": store.n_videos, "done": int((status != PENDING).sum()), "todo": len(todo)}
        )

    mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1, 1) * 255
    std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1, 1) * 255
    use_amp = opts.amp and device.type == "cuda"
    timings = {"decode_wait": 0.0, "forward": 0.0, "write": 0.0, "worker_decode": 0.0}
    failures: list[tuple[str, str]] = []
    clips_done = 0

    buffers: dict[int, _ShardBuffer] = {}
    shard_of = {}
    for s in shards:
        for v in store.shard_videos(s):
            shard_of[v] = s
    # crops waiting for the backbone: (video, first crop row within the video, uint8 crops)
    batch_items: list[tuple[int, int, np.ndarray]] = []
    batch_n = 0
    finished_results: dict[int, DecodeResult] = {}

    def buffer_for(v: int) -> _ShardBuffer:
        s = shard_of[v]
        if s not in buffers:
            buffers[s] = _ShardBuffer(store, s, map_shape)
        return buffers[s]

    def run_forward() -> None:
        nonlocal batch_items, batch_n, clips_done
        if not batch_items:
            return
        t0 = time.perf_counter()
        x = torch.from_numpy(np.concatenate([c for _, _, c in batch_items])).to(device, non_blocking=True)
        x = x.permute(0, 4, 1, 2, 3).float()  # (B, T, S, S, 3) -> (B, 3, T, S, S)
        x = (x - mean) / std
        with torch.inference_mode(), torch.autocast(device.type, enabled=use_amp):
            pooled, fmap = backbone(x)
        pooled = pooled.float().cpu().numpy()
        fmaps = fmap.to(torch.float16).cpu().numpy() if opts.feature_maps else None
        timings["forward"] += time.perf_counter() - t0
        row = 0
        for v, first, crops in batch_items:
            n = len(crops)
            buf = buffer_for(v)
            sl = buf.rows(v)
            r0 = sl.start + first
            buf.features[r0 : r0 + n] = pooled[row : row + n]
            if fmaps is not None:
                buf.maps[r0 : r0 + n] = fmaps[row : row + n]
            row += n
            if first + n == store.crops_per_video:
                finish_video(v, finished_results.pop(v))
        clips_done += row
        batch_items, batch_n = [], 0

    def finish_video(v: int, res: DecodeResult) -> None:
        buf = buffer_for(v)
        sl = buf.rows(v)
        if res.meta.status == DONE:
            buf.boxes[sl] = res.boxes
            buf.flips[sl] = res.flips
        else:
            failures.append(
                (store_paths[v], f"{Reason(res.meta.reason_code).name.lower()}: {res.meta.reason}")
            )
        buf.metas[v - buf.videos.start] = res.meta
        if progress:
            progress("video", {"clips": store.crops_per_video if res.meta.status == DONE else 0})
        if buf.complete:
            t0 = time.perf_counter()
            store.write_shard(shard_of[v], buf.features, buf.boxes, buf.flips, buf.metas, buf.maps)
            timings["write"] += time.perf_counter() - t0
            del buffers[shard_of[v]]
            if progress:
                progress("shard", {"shard": shard_of[v]})

    def take(res: DecodeResult) -> None:
        nonlocal batch_n
        timings["worker_decode"] += res.seconds
        v = res.index
        if res.meta.status != DONE:
            finish_video(v, res)
            return
        finished_results[v] = res
        crops, first = res.crops, 0
        res.crops = None
        while first < len(crops):
            room = opts.batch_size - batch_n
            part = crops[first : first + room]
            batch_items.append((v, first, part))
            batch_n += len(part)
            first += len(part)
            if batch_n >= opts.batch_size:
                run_forward()

    store_paths = store.paths()
    root = Path(manifest.root)
    in_flight_cap = max(2, 2 * opts.workers + 1)
    with DecodePool(opts.workers, opts.timeout_s) as pool:
        queue = iter(todo)
        exhausted = False
        while True:
            while not exhausted and pool.pending() < in_flight_cap:
                v = next(queue, None)
                if v is None:
                    exhausted = True
                    break
                pool.submit(DecodeTask(v, str(root / store_paths[v]), store_paths[v], settings))
            if pool.pending() == 0:
                break
            t0 = time.perf_counter()
            results = pool.get(block=True)
            timings["decode_wait"] += time.perf_counter() - t0
            for res in results:
                take(res)
        run_forward()
    if buffers:  # cannot happen unless a shard lost a video: never write it half-done
        raise RuntimeError(f"internal error: shards {sorted(buffers)} incomplete at the end of the run")

    status = store.status()
    n_failed = int((status == FAILED).sum())
    n_done = int((status == DONE).sum())
    frac = n_failed / max(1, store.n_videos)
    code = EXIT_OK if n_failed == 0 else EXIT_SOME_FAILED
    if frac > opts.max_failed_fraction:
        code = EXIT_TOO_MANY_FAILED
    timings["total"] = time.perf_counter() - t_start
    timings["cleaned_partial_files"] = cleaned
    return ExtractReport(
        store=str(out),
        n_videos=store.n_videos,
        done=n_done,
        failed=n_failed,
        pending=int((status == PENDING).sum()),
        processed_now=len(todo),
        clips=clips_done,
        seconds=timings["total"],
        failures=failures,
        timings=timings,
        exit_code=code,
    )


def _reset_failed(store: FeatureStore, rank: int, world: int) -> None:
    """Mark this process's failed videos pending again so their shards are redone (`--retry-failed`)."""
    status = store.status()
    for s in range(store.n_shards):
        if s % world != rank:
            continue
        vids = store.shard_videos(s)
        if (status[vids.start : vids.stop] == FAILED).any():
            store.group["videos/status"][vids.start : vids.stop] = np.where(
                status[vids.start : vids.stop] == FAILED, PENDING, status[vids.start : vids.stop]
            ).astype(np.uint8)
