"""The feature store: one Zarr v3 group per (split, sampling mode, backbone).

Layout (N videos, K crops per video, D feature dims):

    videos/path        (N,)   str      relative path of each video (written at creation)
    videos/label       (N,)   int32    class index, -1 when unknown (written at creation)
    videos/status      (N,)   uint8    0 pending, 1 done, 2 failed
    videos/reason_code (N,)   uint8    a `Reason` code, 0 for done videos
    videos/reason      (N,)   str      short human-readable failure text
    videos/num_frames  (N,)   int32    frames counted from the packet index (what crops are sampled on)
    videos/decoded_frames (N,) int32   frames that actually decoded (may be fewer; see vcache.data.video)
    videos/fps, videos/height, videos/width
    videos/decode_errors (N,) int32    decoder messages while decoding the video (since store 1.1)
    videos/rotation    (N,)   int16    display-matrix rotation, degrees ccw, recorded not applied (1.1)
    videos/warnings    (N,)   str      done but damaged: truncated, decoder errors, rotation (1.1)
    shards/digest      (S,)   str      SHA-256 of each written shard's arrays, one chunk per shard (1.1)
    crops/features     (N*K, D)    float16 by default, pooled backbone feature per crop
    crops/boxes        (N*K, 6)    float32 t0, t1, y0, x0, y1, x1 in [0, 1] of the original frame
    crops/flip         (N*K,)      bool     horizontal flip applied before the backbone
    crops/maps         (N*K, T', H', W', C)  optional, feature map before pooling

Every per-video array is chunked on `videos_per_shard` boundaries and every per-crop array is
sharded on `videos_per_shard * K` rows, so shard s of every array covers the same videos. A writer
writes one whole shard at a time, crops first and the per-video status last, so a killed run (SIGKILL)
leaves a shard entirely pending or entirely finished (done or failed) with its digest; a graceful stop
(SIGINT, SIGTERM) also writes a shard's finished videos and leaves the others pending, without a digest.
A run resumes by redoing the pending videos of those shards, and two writers never touch the same file
as long as they own different shards.

The arrays marked 1.1 are absent from older stores, which stay readable (they read as 0 and ""); a resumed
older store does not get them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from vcache.data.records import FAILED, PENDING, VideoMeta
from vcache.store.location import Remote, location

SCHEMA_VERSION = 1
CHUNK_BYTES = 1 << 20  # zarr chunks of at least ~1 MB read and write efficiently


class StoreError(RuntimeError):
    """A store is missing, malformed, or incompatible with what was asked."""


_META_ARRAYS = {
    "status": ("uint8", PENDING),
    "reason_code": ("uint8", 0),
    "num_frames": ("int32", 0),
    "decoded_frames": ("int32", 0),
    "fps": ("float32", 0.0),
    "height": ("int32", 0),
    "width": ("int32", 0),
}


# Per-video arrays of newer stores (optional when reading: see the module docstring).
_RECORD_ARRAYS = {"decode_errors": ("int32", 0), "rotation": ("int16", 0)}


def shard_digest(data: dict[str, np.ndarray]) -> str:
    """SHA-256 (first 32 hex digits) of one shard's arrays in write order, recorded in `shards/digest`."""
    h = hashlib.sha256()
    for name, a in data.items():
        h.update(name.encode())
        a = np.asarray(a)
        if a.dtype.kind in "OUT":
            h.update("\0".join(str(x) for x in a.tolist()).encode())
        else:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:32]


def manifest_hash(paths: list[str], labels: list[int] | np.ndarray) -> str:
    h = hashlib.sha256()
    for p, y in zip(paths, labels, strict=True):
        h.update(f"{p}\t{int(y)}\n".encode())
    return h.hexdigest()[:16]


def _rows_per_chunk(rows_per_shard: int, row_bytes: int) -> int:
    """Largest divisor of the shard's rows whose chunk stays near CHUNK_BYTES (at least one row)."""
    want = max(1, CHUNK_BYTES // max(1, row_bytes))
    if want >= rows_per_shard:
        return rows_per_shard
    best = 1
    for d in range(1, rows_per_shard + 1):
        if rows_per_shard % d == 0 and d <= want:
            best = d
    return best


class FeatureStore:
    """A handle on one store. Open with `open_store` or make with `create_store`."""

    def __init__(self, path: str | Path | Remote, group: zarr.Group):
        self.path = location(path)  # a Path, or a Remote (str() gives its URL)
        self.group = group
        self.attrs: dict[str, Any] = dict(group.attrs)
        if self.attrs.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema_version {self.attrs.get('schema_version')!r}, expected {SCHEMA_VERSION}"
            )
        self.n_videos = int(self.attrs["n_videos"])
        self.crops_per_video = int(self.attrs["crops_per_video"])
        self.videos_per_shard = int(self.attrs["videos_per_shard"])
        self.feature_dim = int(self.attrs["feature_dim"])
        self.n_shards = max(1, math.ceil(self.n_videos / self.videos_per_shard))

    # -- geometry -------------------------------------------------------------------------------
    def shard_videos(self, shard: int) -> range:
        v0 = shard * self.videos_per_shard
        return range(v0, min(self.n_videos, v0 + self.videos_per_shard))

    @property
    def has_maps(self) -> bool:
        return "maps" in self.group["crops"]

    # -- per-video reads ------------------------------------------------------------------------
    def status(self) -> np.ndarray:
        return self.group["videos/status"][:]

    def paths(self) -> list[str]:
        return [str(p) for p in self.group["videos/path"][:]]

    def labels(self) -> np.ndarray:
        return self.group["videos/label"][:]

    def meta(self, name: str) -> np.ndarray:
        if name in _RECORD_ARRAYS and name not in self.group["videos"]:
            return np.zeros(self.n_videos, dtype=_RECORD_ARRAYS[name][0])  # an older store
        return self.group[f"videos/{name}"][:]

    def warnings(self) -> list[str]:
        if "warnings" not in self.group["videos"]:
            return [""] * self.n_videos
        return [str(w) for w in self.group["videos/warnings"][:]]

    def reasons(self) -> list[str]:
        return [str(r) for r in self.group["videos/reason"][:]]

    def pending_shards(self, retry_failed: bool = False) -> list[int]:
        st = self.status()
        todo = st == PENDING
        if retry_failed:
            todo |= st == FAILED
        return [
            s
            for s in range(self.n_shards)
            if todo[self.shard_videos(s).start : self.shard_videos(s).stop].any()
        ]

    # -- writing --------------------------------------------------------------------------------
    def write_shard(
        self,
        shard: int,
        features: np.ndarray,
        boxes: np.ndarray,
        flips: np.ndarray,
        metas: list[VideoMeta | None],
        maps: np.ndarray | None = None,
    ) -> None:
        """Write one whole shard: crop arrays first, then the per-video arrays, status last.

        features: (n*K, D); boxes: (n*K, 6); flips: (n*K,); metas: n entries. Rows of failed videos are
        written too (zeros, boxes of -1) so every shard file is complete. A meta of None is a video not
        finished yet (a graceful stop writes the finished part of a shard): it stays pending, and a shard
        with a pending video gets no digest (an empty one) until a later run writes it complete.
        """
        vids = self.shard_videos(shard)
        n, k = len(vids), self.crops_per_video
        if len(metas) != n or features.shape != (n * k, self.feature_dim):
            raise StoreError(f"shard {shard}: expected {n} videos and {(n * k, self.feature_dim)} features")
        r0, r1 = vids.start * k, vids.stop * k
        metas = [m if m is not None else VideoMeta(status=PENDING) for m in metas]
        data = self._shard_data_to_write(features, boxes, flips, metas, maps)
        for name, a in data.items():  # crop arrays first, per-video ones next, status last
            if name != "videos/status":
                rows = slice(r0, r1) if name.startswith("crops/") else slice(vids.start, vids.stop)
                self.group[name][rows] = a
        if "shards" in self.group:  # before the status: a shard marked finished always has its digest
            partly = (data["videos/status"] == PENDING).any()
            self.group["shards/digest"][shard] = "" if partly else shard_digest(data)
        self.group["videos/status"][vids.start : vids.stop] = data["videos/status"]

    def _shard_data_to_write(self, features, boxes, flips, metas, maps) -> dict[str, np.ndarray]:
        g, v = self.group, self.group["videos"]
        data = {
            "crops/features": features.astype(g["crops/features"].dtype, copy=False),
            "crops/boxes": boxes.astype(np.float32, copy=False),
            "crops/flip": flips.astype(bool, copy=False),
        }
        if maps is not None:
            data["crops/maps"] = maps.astype(g["crops/maps"].dtype, copy=False)
        data["videos/reason"] = np.array([m.reason[:200] for m in metas], dtype=str)
        if "warnings" in v:
            data["videos/warnings"] = np.array([m.warning[:300] for m in metas], dtype=str)
        for name in (*_META_ARRAYS, *_RECORD_ARRAYS):
            if name in v and name != "status":
                data[f"videos/{name}"] = np.array([getattr(m, name) for m in metas]).astype(v[name].dtype)
        data["videos/status"] = np.array([m.status for m in metas], dtype=np.uint8)
        return data

    def shard_data(self, shard: int) -> dict[str, np.ndarray]:
        """Read back what `write_shard` wrote for `shard` (the arrays its digest covers)."""
        vids = self.shard_videos(shard)
        k = self.crops_per_video
        names = ["crops/features", "crops/boxes", "crops/flip"] + (["crops/maps"] if self.has_maps else [])
        names += ["videos/reason"] + (["videos/warnings"] if "warnings" in self.group["videos"] else [])
        names += [f"videos/{n}" for n in (*_META_ARRAYS, *_RECORD_ARRAYS) if n in self.group["videos"]]
        names = [n for n in names if n != "videos/status"] + ["videos/status"]
        return {
            n: self.group[n][vids.start * k : vids.stop * k]
            if n.startswith("crops/")
            else self.group[n][vids.start : vids.stop]
            for n in names
        }

    def finished_metas(self, shard: int, data: dict[str, np.ndarray]) -> list[VideoMeta | None]:
        """The per-video records of `shard` as read back by `shard_data`: None for a pending video. A run
        resuming a partly written shard starts from these, so it redoes only the pending videos."""
        v = self.group["videos"]
        out: list[VideoMeta | None] = []
        for j in range(len(self.shard_videos(shard))):
            if data["videos/status"][j] == PENDING:
                out.append(None)
                continue
            kw = {n: data[f"videos/{n}"][j].item() for n in (*_META_ARRAYS, *_RECORD_ARRAYS) if n in v}
            kw["reason"] = str(data["videos/reason"][j])
            if "warnings" in v:
                kw["warning"] = str(data["videos/warnings"][j])
            out.append(VideoMeta(**kw))
        return out

    def update_attrs(self, **kv: Any) -> None:
        self.attrs.update(kv)
        self.group.attrs.put(json.loads(json.dumps(self.attrs)))  # one write (attrs.update: one per key)

    # -- housekeeping ---------------------------------------------------------------------------
    def partial_files(self) -> list[Path]:
        """Temporary files a killed write leaves (zarr writes `name.<uuid>.partial`, then renames). None on
        object storage: a put is whole or absent."""
        if isinstance(self.path, Remote):
            return []
        return sorted(self.path.rglob("*.partial"))

    def clean_partial_files(self) -> int:
        files = self.partial_files()
        for f in files:
            f.unlink(missing_ok=True)
        return len(files)


def creation_is_dead(folder: Path, other_host_after_s: float = 3600.0) -> bool:
    """Whether a `.NAME.creating-<id>-<pid>-<host>` folder was left by a process that is gone: on this
    host, its pid no longer exists; from another host (shared file system) it is older than an hour."""
    try:
        _, pid, host = folder.name.split(".creating-", 1)[1].split("-", 2)
        pid_n = int(pid)
    except ValueError:
        return True  # not our naming: an older version's leftover
    if host == socket.gethostname():
        try:
            os.kill(pid_n, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    try:
        return time.time() - folder.stat().st_mtime > other_host_after_s
    except OSError:
        return False


def create_store(
    path: str | Path,
    paths: list[str],
    labels: list[int] | np.ndarray,
    crops_per_video: int,
    feature_dim: int,
    attrs: dict[str, Any],
    *,
    videos_per_shard: int = 64,
    feature_dtype: str = "float16",
    map_shape: tuple[int, int, int, int] | None = None,
) -> FeatureStore:
    """Create an empty store (all videos pending). `attrs` carries the provenance (see vcache.extract).

    The store is built in a temporary folder beside `path` and renamed into place, so a store that exists
    is complete: a kill during creation leaves only a `.NAME.creating-*` folder, removed by the next run.
    On object storage (no rename) a conditional-put creation marker elects one creator and the root
    attributes are written last (`vcache.store.remote.create_remote`).
    """
    n = len(paths)
    if n == 0:
        raise StoreError("no videos to store")
    full = dict(attrs)
    full.update(
        schema_version=SCHEMA_VERSION,
        n_videos=n,
        crops_per_video=crops_per_video,
        videos_per_shard=max(1, min(videos_per_shard, n)),
        feature_dim=feature_dim,
        feature_dtype=feature_dtype,
        map_shape=list(map_shape) if map_shape else None,
        manifest_hash=manifest_hash(paths, labels),
    )
    full = json.loads(json.dumps(full))  # plain JSON types only
    loc = location(path)
    if isinstance(loc, Remote):
        from vcache.store.remote import create_remote

        create_remote(loc, lambda root: _build(root, paths, labels, full), full)
        return open_store(loc, mode="r+")
    final = loc
    for old in final.parent.glob(f".{final.name}.creating-*"):
        if creation_is_dead(old):  # not another process's creation in progress (--part runs)
            shutil.rmtree(old, ignore_errors=True)
    tmp = final.parent / f".{final.name}.creating-{uuid.uuid4().hex[:8]}-{os.getpid()}-{socket.gethostname()}"
    root = zarr.open_group(str(tmp), mode="w")
    root.attrs.put(full)
    _build(root, paths, labels, full)
    try:
        os.rename(tmp, final)  # atomic; fails if `path` appeared meanwhile (another process won)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # our own half of the race: leave nothing behind
        raise
    return open_store(final, mode="r+")


def _build(root: zarr.Group, paths, labels, full: dict[str, Any]) -> None:
    """Every array of an empty store (all videos pending) under `root`."""
    n, k, vps = len(paths), int(full["crops_per_video"]), int(full["videos_per_shard"])
    feature_dim, feature_dtype, map_shape = full["feature_dim"], full["feature_dtype"], full["map_shape"]
    v = root.create_group("videos")
    v.create_array("path", shape=(n,), dtype=str, chunks=(n,))[:] = np.asarray(paths, dtype=str)
    v.create_array("label", shape=(n,), dtype="int32", chunks=(n,))[:] = np.asarray(labels, dtype=np.int32)
    for name, (dt, fill) in {**_META_ARRAYS, **_RECORD_ARRAYS}.items():
        v.create_array(name, shape=(n,), dtype=dt, chunks=(vps,), fill_value=fill)
    for name in ("reason", "warnings"):
        v.create_array(name, shape=(n,), dtype=str, chunks=(vps,), fill_value="")
    root.create_group("shards").create_array(
        "digest", shape=(math.ceil(n / vps),), dtype=str, chunks=(1,), fill_value=""
    )
    c = root.create_group("crops")
    rows, srows = n * k, vps * k
    fbytes = np.dtype(feature_dtype).itemsize
    specs = {
        "features": ((feature_dim,), feature_dtype, fbytes * feature_dim, 0),
        "boxes": ((6,), "float32", 24, -1.0),
        "flip": ((), "bool", 1, False),
    }
    if map_shape:
        specs["maps"] = (tuple(map_shape), feature_dtype, fbytes * int(np.prod(map_shape)), 0)
    for name, (tail, dt, row_bytes, fill) in specs.items():
        chunk_rows = _rows_per_chunk(srows, row_bytes)
        c.create_array(
            name,
            shape=(rows, *tail),
            dtype=dt,
            chunks=(chunk_rows, *tail),
            shards=(srows, *tail) if chunk_rows < srows else None,
            fill_value=fill,
        )


def open_store(path: str | Path | Remote, mode: str = "r") -> FeatureStore:
    p = location(path)
    if isinstance(p, Remote):
        if p.read("zarr.json") is None:
            raise StoreError(f"{p}: not a vcache store (no zarr.json)")
        where: Any = p.zarr_store(read_only=mode == "r")
    elif not (p / "zarr.json").exists():
        raise StoreError(f"{p}: not a vcache store (no zarr.json)")
    else:
        where = str(p)
    try:
        group = zarr.open_group(where, mode=mode, zarr_format=3)  # vcache stores are Zarr v3: no v2 probes
    except Exception as e:  # zarr raises several types for malformed metadata
        raise StoreError(f"{p}: cannot open as a Zarr group: {e}") from e
    if "schema_version" not in group.attrs:
        raise StoreError(f"{p}: a Zarr group but not a vcache store (no schema_version attribute)")
    return FeatureStore(p, group)
