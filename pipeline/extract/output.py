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
    """Rows of one shard, filled as videos finish; written whole when every video is in."""

    def __init__(self, store: FeatureStore, shard: int, map_shape):
        self.videos = store.shard_videos(shard)
        k, n = store.crops_per_video, len(self.videos)
        self.features = np.zeros((n * k, store.feature_dim), dtype=np.float32)
        self.boxes = np.full((n * k, 6), -1.0, dtype=np.float32)
        self.flips = np.zeros(n * k, dtype=bool)
        # the store's dtype: --fp32 keeps float32 maps, not maps rounded to float16 on the way
        mdt = store.group["crops/maps"].dtype if map_shape else None
        self.maps = np.zeros((n * k, *map_shape), dtype=mdt) if map_shape else None
        self.metas: list[VideoMeta | None] = [None] * n
        self.k = k

    def preload(self, store: FeatureStore, shard: int) -> list[int]:
        """Start from what a graceful stop wrote of this shard: its finished videos' rows and records.
        Returns the videos still pending (all of them for a shard never written)."""
        status = store.group["videos/status"][self.videos.start : self.videos.stop]
        if (status == PENDING).all():
            return list(self.videos)
        data = store.shard_data(shard)
        self.features[:] = data["crops/features"]
        self.boxes[:] = data["crops/boxes"]
        self.flips[:] = data["crops/flip"]
        if self.maps is not None:
            self.maps[:] = data["crops/maps"]
        self.metas = store.finished_metas(shard, data)
        return [v for v, m in zip(self.videos, self.metas, strict=True) if m is None]

    def rows(self, video: int) -> slice:
        i = video - self.videos.start
        return slice(i * self.k, (i + 1) * self.k)

    @property
    def complete(self) -> bool:
        return all(m is not None for m in self.metas)
