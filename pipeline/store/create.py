"""Creating a store: every array of an empty store (all videos pending), built in a temporary folder and
renamed into place (on object storage: elected by a conditional put, `vcache.store.remote`).

Schema version 2 (`docs/store.md` has the layout field by field). The crop arrays are global; store shard s
owns the rows `[s * rows_per_shard, s * rows_per_shard + rows_per_shard)` and no other shard writes there:
- fixed K rows per video (train, eval, pairs): `rows_per_shard = videos_per_shard * K`, the arrays have
  `N * K` rows sharded on that boundary (the version 1 layout), video i's rows are `i*K .. i*K+K-1`;
- a variable number of rows per video (dense): `rows_per_shard = DENSE_ROWS_PER_SHARD`, a region far larger
  than any shard needs; the arrays are `n_shards * rows_per_shard` rows long but only written chunks exist
  on disk. Chunks are a power of two rows (about 1 MB) that divides the region, so a region starts on a
  chunk boundary and no chunk file holds rows of two shards. A shard's videos take consecutive rows from
  the start of its region, as they finish; `videos/row_start` (global row) and `videos/row_count` say where.
"""

from __future__ import annotations

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

from vcache.store.format import (
    _META_ARRAYS,
    _RECORD_ARRAYS,
    _ROW_ARRAYS,
    CHUNK_BYTES,
    SCHEMA_VERSION,
    FeatureStore,
    StoreError,
    manifest_hash,
    open_store,
)
from vcache.store.location import Remote, location

DENSE_ROWS_PER_SHARD = 1 << 24  # rows a dense shard may hold: 64 videos of 262k windows each


def _rows_per_chunk(rows_per_shard: int, row_bytes: int, power_of_two: bool = False) -> int:
    """Largest divisor of the shard's rows whose chunk stays near CHUNK_BYTES (at least one row)."""
    want = max(1, CHUNK_BYTES // max(1, row_bytes))
    if power_of_two:  # divides DENSE_ROWS_PER_SHARD
        return min(rows_per_shard, 1 << (want.bit_length() - 1))
    if want >= rows_per_shard:
        return rows_per_shard
    best = 1
    for d in range(1, rows_per_shard + 1):
        if rows_per_shard % d == 0 and d <= want:
            best = d
    return best


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
    schema_version: int = SCHEMA_VERSION,
) -> FeatureStore:
    """Create an empty store (all videos pending). `attrs` carries the provenance (see vcache.extract).

    The store is built in a temporary folder beside `path` and renamed into place, so a store that exists
    is complete: a kill during creation leaves only a `.NAME.creating-*` folder, removed by the next run.
    On object storage (no rename) a conditional-put creation marker elects one creator and the root
    attributes are written last (`vcache.store.remote.create_remote`).
    `crops_per_video` 0 makes a store with a variable number of rows per video (dense mode).
    `schema_version` 1 makes the old layout (no row offsets, no times), for tests of old stores only.
    """
    n = len(paths)
    if n == 0:
        raise StoreError("no videos to store")
    if schema_version not in (1, 2) or (schema_version == 1 and crops_per_video < 1):
        raise StoreError(f"cannot create a schema {schema_version} store with {crops_per_video} rows a video")
    vps = max(1, min(videos_per_shard, n))
    full = dict(attrs)
    full.update(
        schema_version=schema_version,
        n_videos=n,
        crops_per_video=crops_per_video,
        videos_per_shard=vps,
        feature_dim=feature_dim,
        feature_dtype=feature_dtype,
        map_shape=list(map_shape) if map_shape else None,
        manifest_hash=manifest_hash(paths, labels),
    )
    if schema_version == 2:
        full["rows_per_shard"] = vps * crops_per_video if crops_per_video else DENSE_ROWS_PER_SHARD
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
    v2 = full["schema_version"] == 2
    v = root.create_group("videos")
    v.create_array("path", shape=(n,), dtype=str, chunks=(n,))[:] = np.asarray(paths, dtype=str)
    v.create_array("label", shape=(n,), dtype="int32", chunks=(n,))[:] = np.asarray(labels, dtype=np.int32)
    per_video = {**_META_ARRAYS, **_RECORD_ARRAYS, **(_ROW_ARRAYS if v2 else {})}
    for name, (dt, fill) in per_video.items():
        v.create_array(name, shape=(n,), dtype=dt, chunks=(vps,), fill_value=fill)
    for name in ("reason", "warnings"):
        v.create_array(name, shape=(n,), dtype=str, chunks=(vps,), fill_value="")
    n_shards = math.ceil(n / vps)
    shards = root.create_group("shards")
    shards.create_array("digest", shape=(n_shards,), dtype=str, chunks=(1,), fill_value="")
    c = root.create_group("crops")
    srows = int(full["rows_per_shard"]) if v2 else vps * k
    rows = n * k if k else n_shards * srows
    fbytes = np.dtype(feature_dtype).itemsize
    specs = {
        "features": ((feature_dim,), feature_dtype, fbytes * feature_dim, 0),
        "boxes": ((6,), "float32", 24, -1.0),
        "flip": ((), "bool", 1, False),
    }
    if v2:
        specs["start_s"] = ((), "float64", 8, float("nan"))
        specs["end_s"] = ((), "float64", 8, float("nan"))
    if map_shape:
        specs["maps"] = (tuple(map_shape), feature_dtype, fbytes * int(np.prod(map_shape)), 0)
    for name, (tail, dt, row_bytes, fill) in specs.items():
        chunk_rows = _rows_per_chunk(srows, row_bytes, power_of_two=not k)
        c.create_array(
            name,
            shape=(rows, *tail),
            dtype=dt,
            chunks=(chunk_rows, *tail),
            shards=(srows, *tail) if k and chunk_rows < srows else None,  # dense: no zarr shards
            fill_value=fill,
        )
