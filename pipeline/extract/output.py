"""The output side of extraction: store attributes, opening or creating the store for a resume, cleaning
what a killed run left, and the per-shard buffer that is written whole."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

import vcache
from vcache.data.crops import CropSettings
from vcache.extract.options import ExtractOptions
from vcache.models import VideoBackbone, describe
from vcache.store import (
    DONE,
    PENDING,
    FeatureStore,
    StoreError,
    VideoMeta,
    create_store,
    creation_is_dead,
    manifest_hash,
    open_store,
)
from vcache.store.location import Remote, location
from vcache.store.lock import StoreLock, others_alive


def store_attrs(
    backbone: VideoBackbone,
    settings: CropSettings,
    manifest: Any,
    opts: ExtractOptions,
    map_shape,
    device_type: str = "cpu",
) -> dict[str, Any]:
    """Everything needed to use a store without the command line that made it, including how the forward
    pass computed (`compute`: device type and whether CUDA autocast was on)."""
    bb = describe(backbone)
    if opts.init_seed is not None and not bb.get("checkpoint"):
        bb["init_seed"] = opts.init_seed
    return {
        "backbone": bb,
        "sampling": settings.to_dict(),
        "manifest": manifest.to_dict(),
        "class_names": list(manifest.class_names),
        "class_families": opts.class_families,
        "video_root": str(Path(manifest.root).resolve()),
        "feature_maps": bool(opts.feature_maps),
        "compute": {
            "device": device_type,
            "amp": bool(opts.amp and device_type == "cuda"),
            "channels_last": bool(opts.channels_last),
            "compile": opts.compile if isinstance(opts.compile, str) else bool(opts.compile),
        },
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


def _exists(out) -> bool:
    if isinstance(out, Remote):
        from vcache.store.remote import published

        return published(out)
    return (out / "zarr.json").exists()


def open_or_create(
    out: Path | Remote,
    paths: list[str],
    labels: list[int],
    k: int,
    feature_dim: int,
    attrs: dict[str, Any],
    opts: ExtractOptions,
    map_shape,
) -> FeatureStore:
    """Open `out` to resume it, or create it; refuse to append with different settings.

    Safe with several processes: creation renames a complete store into place, and a process that loses
    the race opens the winner's store (whose settings then must match its own). On object storage a
    conditional-put marker elects the creator (vcache.store.remote).
    """
    out = location(out)
    if not _exists(out):
        try:
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
        except OSError:
            if not _exists(out):
                raise
    store = open_store(out, mode="r+")
    want = dict(attrs)
    want.update(
        manifest_hash=manifest_hash(paths, labels),
        feature_dim=feature_dim,
        feature_dtype=opts.feature_dtype,
        map_shape=list(map_shape) if map_shape else None,
    )
    have_c, want_c = _comparable(store.attrs), json.loads(json.dumps(_comparable(want)))
    diff = [key for key in have_c if have_c[key] != want_c[key]]
    had = store.attrs.get("compute")  # stores made before it was recorded have none
    if had is not None and bool(had.get("amp")) != bool(want["compute"]["amp"]):
        diff.append(f"compute.amp ({had.get('amp')} in the store; --no-amp or a CUDA device changes it)")
    if diff:
        raise StoreError(
            f"{out} was made with different settings ({', '.join(diff)} differ); "
            "rerun with the same options to resume, --overwrite to start again, or choose another --out"
        )
    return store


def clean_leftovers(out: Path | Remote, lock: StoreLock | None = None, young_s: float = 600.0) -> int:
    """Remove what killed runs left: half-built `.NAME.creating-*` folders whose process is gone, and
    zarr's `*.partial` temporaries. While another run holds a live lock on the store (a `--part` running
    beside this one), a temporary younger than ``young_s`` may be its write in progress (zarr renames it
    within the chunk write) and is left alone. On object storage a put is whole or absent: no temporaries
    (a dead creation is redone by `create_remote`, dead locks and claims are taken over)."""
    if isinstance(out, Remote):
        return 0
    n = 0
    for d in out.parent.glob(f".{out.name}.creating-*"):
        if creation_is_dead(d):
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    shared = lock is not None and others_alive(lock)
    now = time.time()
    for f in out.rglob("*.partial"):
        try:
            if shared and now - f.stat().st_mtime < young_s:
                continue
        except OSError:
            continue  # renamed meanwhile: a live write
        f.unlink(missing_ok=True)
        n += 1
    return n


class ShardBuffer:
    """Rows of one shard, kept per video as videos finish (a dense video's row count is known once its first
    segment is decoded); written whole when every video is in, or its finished part at a graceful stop."""

    def __init__(self, store: FeatureStore, shard: int, map_shape):
        self.store, self.map_shape = store, map_shape
        self.videos = store.shard_videos(shard)
        # the store's dtype: --fp32 keeps float32 maps, not maps rounded to float16 on the way
        self.map_dtype = store.group["crops/maps"].dtype if map_shape else None
        self.rows: dict[int, dict[str, np.ndarray]] = {}  # video -> features, boxes, flip, times, maps
        self.metas: list[VideoMeta | None] = [None] * len(self.videos)
        self.order: list[int] = []  # videos whose rows the store already holds, in row order

    def blank(self, n: int) -> dict[str, np.ndarray]:
        """n empty rows: zero features, boxes of -1, no flip, unknown (NaN) times."""
        r = {
            "features": np.zeros((n, self.store.feature_dim), dtype=np.float32),
            "boxes": np.full((n, 6), -1.0, dtype=np.float32),
            "flip": np.zeros(n, dtype=bool),
            "times": np.full((n, 2), np.nan),
        }
        if self.map_shape:
            r["maps"] = np.zeros((n, *self.map_shape), dtype=self.map_dtype)
        return r

    def open_video(self, video: int, n: int, times: np.ndarray | None = None) -> dict[str, np.ndarray]:
        r = self.rows[video] = self.blank(n)
        if times is not None:
            r["times"][:] = np.asarray(times, dtype=np.float64).reshape(n, 2)
        return r

    def preload(self, store: FeatureStore, shard: int) -> list[int]:
        """Start from what a graceful stop wrote of this shard: its finished videos' rows and records.
        Returns the videos still pending (all of them for a shard never written)."""
        status = store.group["videos/status"][self.videos.start : self.videos.stop]
        if (status == PENDING).all():
            return list(self.videos)
        data = store.shard_data(shard)
        self.metas = store.finished_metas(shard, data)
        starts, counts = store.row_spans(self.videos)
        r0 = store.shard_rows(shard, (starts, counts)).start
        for j, v in enumerate(self.videos):
            if counts[j] > 0:
                sl = slice(int(starts[j] - r0), int(starts[j] - r0 + counts[j]))
                r = self.open_video(v, int(counts[j]))
                for name in ("features", "boxes", "flip", "maps"):
                    if name in r:
                        r[name][:] = data[f"crops/{name}"][sl]
                if "crops/start_s" in data:
                    r["times"][:] = np.stack([data["crops/start_s"][sl], data["crops/end_s"][sl]], axis=1)
        self.order = [int(v) for v in np.array(list(self.videos))[np.argsort(starts)] if v in self.rows]
        return [v for v, m in zip(self.videos, self.metas, strict=True) if m is None]

    def arrays(self) -> dict:
        """What `FeatureStore.write_shard` takes: fixed K, every video's K rows in video order (zeros and
        boxes of -1 for failed and pending videos); dense, the done videos' rows, those the store already
        holds first (they keep their place), and `spans` (start in the shard's region, count) per video."""
        done = [v for v, m in zip(self.videos, self.metas, strict=True) if m is not None and m.status == DONE]
        k = self.store.crops_per_video
        if k:
            parts = [self.rows[v] if v in done else self.blank(k) for v in self.videos]
        else:
            order = [v for v in self.order if v in done] + [v for v in done if v not in self.order]
            parts = [self.rows[v] for v in order]
            starts, counts = np.zeros(len(self.videos), np.int64), np.zeros(len(self.videos), np.int64)
            at = 0
            for v in order:
                n = len(self.rows[v]["features"])
                starts[v - self.videos.start], counts[v - self.videos.start] = at, n
                at += n
        blank = self.blank(0)
        cat = {name: np.concatenate([p[name] for p in parts] or [blank[name]]) for name in blank}
        out = {"features": cat["features"], "boxes": cat["boxes"], "flips": cat["flip"]}
        out.update(times=cat["times"], maps=cat.get("maps"), spans=None if k else (starts, counts))
        return out

    def n_rows(self, video: int) -> int:
        return len(self.rows[video]["features"]) if video in self.rows else 0

    @property
    def complete(self) -> bool:
        return all(m is not None for m in self.metas)


class VideoTrack:
    """A video being decoded and forwarded: its record, dense segments still decoding, crops queued."""

    def __init__(self, meta):
        self.meta, self.tasks_left, self.queued = meta, 0, 0

    def merge(self, meta) -> None:
        """A later dense segment came back: it ends one task; a failed one fails the video."""
        self.tasks_left -= 1
        if meta.status != DONE:
            if self.meta.status == DONE:
                self.meta = meta
            return
        self.meta.decode_errors += meta.decode_errors
        self.meta.decoded_frames = min(self.meta.decoded_frames, meta.decoded_frames)
        self.meta.warning = self.meta.warning or meta.warning
