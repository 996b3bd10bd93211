"""The feature store: one Zarr v3 group per (split, sampling mode, backbone).

Layout (N videos, K crops per video, D feature dims):

    videos/path        (N,)   str      relative path of each video (written at creation)
    videos/label       (N,)   int32    class index, -1 when unknown (written at creation)
    videos/status      (N,)   uint8    0 pending, 1 done, 2 failed
    videos/reason_code (N,)   uint8    a `Reason` code, 0 for done videos
    videos/reason      (N,)   str      short human-readable failure text
    videos/num_frames  (N,)   int32    frames counted from the packet index (what crops are sampled on)
    videos/decoded_frames (N,) int32   frames that actually decoded (may be fewer; see vcache.video)
    videos/fps, videos/height, videos/width
    crops/features     (N*K, D)    float16 by default, pooled backbone feature per crop
    crops/boxes        (N*K, 6)    float32 t0, t1, y0, x0, y1, x1 in [0, 1] of the original frame
    crops/flip         (N*K,)      bool     horizontal flip applied before the backbone
    crops/maps         (N*K, T', H', W', C)  optional, feature map before pooling

Every per-video array is chunked on `videos_per_shard` boundaries and every per-crop array is
sharded on `videos_per_shard * K` rows, so shard s of every array covers the same videos. A writer
writes one whole shard at a time, crops first and the per-video status last, so a shard is either
entirely pending or entirely finished (done or failed): a killed run resumes by redoing the shards
that still hold pending videos, and two writers never touch the same file as long as they own
different shards.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from vcache.records import DONE, FAILED, PENDING, STATUS_NAMES, Reason, VideoMeta  # noqa: F401

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

    def __init__(self, path: str | Path, group: zarr.Group):
        self.path = Path(path)
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
        return self.group[f"videos/{name}"][:]

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
        metas: list[VideoMeta],
        maps: np.ndarray | None = None,
    ) -> None:
        """Write one whole shard: crop arrays first, then the per-video arrays, status last.

        features: (n*K, D); boxes: (n*K, 6); flips: (n*K,); metas: n entries. Rows of failed videos are
        written too (zeros, boxes of -1) so every shard file is complete.
        """
        vids = self.shard_videos(shard)
        n, k = len(vids), self.crops_per_video
        if len(metas) != n or features.shape != (n * k, self.feature_dim):
            raise StoreError(f"shard {shard}: expected {n} videos and {(n * k, self.feature_dim)} features")
        r0, r1 = vids.start * k, vids.stop * k
        crops = self.group["crops"]
        crops["features"][r0:r1] = features.astype(crops["features"].dtype, copy=False)
        crops["boxes"][r0:r1] = boxes.astype(np.float32, copy=False)
        crops["flip"][r0:r1] = flips.astype(bool, copy=False)
        if maps is not None:
            crops["maps"][r0:r1] = maps.astype(crops["maps"].dtype, copy=False)
        v = self.group["videos"]
        v["reason"][vids.start : vids.stop] = np.array([m.reason[:200] for m in metas], dtype=object).astype(
            str
        )
        for name in _META_ARRAYS:
            if name == "status":
                continue
            v[name][vids.start : vids.stop] = np.array([getattr(m, name) for m in metas])
        v["status"][vids.start : vids.stop] = np.array([m.status for m in metas], dtype=np.uint8)

    def update_attrs(self, **kv: Any) -> None:
        self.group.attrs.update(kv)
        self.attrs.update(kv)

    # -- housekeeping ---------------------------------------------------------------------------
    def partial_files(self) -> list[Path]:
        """Temporary files a killed write leaves (zarr writes `name.<uuid>.partial`, then renames)."""
        return sorted(self.path.rglob("*.partial"))

    def clean_partial_files(self) -> int:
        files = self.partial_files()
        for f in files:
            f.unlink(missing_ok=True)
        return len(files)


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
    """
    n, k = len(paths), crops_per_video
    if n == 0:
        raise StoreError("no videos to store")
    vps = max(1, min(videos_per_shard, n))
    final = Path(path)
    for old in final.parent.glob(f".{final.name}.creating-*"):
        shutil.rmtree(old, ignore_errors=True)
    tmp = final.parent / f".{final.name}.creating-{uuid.uuid4().hex[:8]}"
    root = zarr.open_group(str(tmp), mode="w")
    full = dict(attrs)
    full.update(
        schema_version=SCHEMA_VERSION,
        n_videos=n,
        crops_per_video=k,
        videos_per_shard=vps,
        feature_dim=feature_dim,
        feature_dtype=feature_dtype,
        map_shape=list(map_shape) if map_shape else None,
        manifest_hash=manifest_hash(paths, labels),
    )
    root.attrs.update(json.loads(json.dumps(full)))  # plain JSON types only
    v = root.create_group("videos")
    v.create_array("path", shape=(n,), dtype=str, chunks=(n,))[:] = np.asarray(paths, dtype=str)
    v.create_array("label", shape=(n,), dtype="int32", chunks=(n,))[:] = np.asarray(labels, dtype=np.int32)
    for name, (dt, fill) in _META_ARRAYS.items():
        v.create_array(name, shape=(n,), dtype=dt, chunks=(vps,), fill_value=fill)
    v.create_array("reason", shape=(n,), dtype=str, chunks=(vps,), fill_value="")
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
    os.rename(tmp, final)  # atomic; fails if `path` appeared meanwhile
    return open_store(final, mode="r+")


def open_store(path: str | Path, mode: str = "r") -> FeatureStore:
    p = Path(path)
    if not (p / "zarr.json").exists():
        raise StoreError(f"{p}: not a vcache store (no zarr.json)")
    try:
        group = zarr.open_group(str(p), mode=mode)
    except Exception as e:  # zarr raises several types for malformed metadata
        raise StoreError(f"{p}: cannot open as a Zarr group: {e}") from e
    if "schema_version" not in group.attrs:
        raise StoreError(f"{p}: a Zarr group but not a vcache store (no schema_version attribute)")
    return FeatureStore(p, group)


@dataclass
class Cache:
    """A store's done videos, loaded into memory for stage 2 (never touches video)."""

    features: np.ndarray  # (n, K, D) float32
    boxes: np.ndarray  # (n, K, 6) float32
    flips: np.ndarray  # (n, K) bool
    labels: np.ndarray  # (n,) int64
    paths: list[str]
    index: np.ndarray  # (n,) row of each video in the store
    attrs: dict[str, Any]

    @property
    def class_names(self) -> list[str]:
        return list(self.attrs.get("class_names") or [])


def load_cache(path: str | Path, include_failed: bool = False, shards: list[int] | None = None) -> Cache:
    """Load the features, boxes and labels of every done video in one read per array (per shard when
    `shards` names a subset: streaming stage 2 loads a group of shards at a time).

    Reading rows one at a time through zarr is 15-90x slower than memory, so stage 2 loads once.
    """
    st = open_store(path)
    k = st.crops_per_video
    vids = [st.shard_videos(s) for s in shards] if shards is not None else [range(st.n_videos)]
    status = st.status()
    parts: dict[str, list[np.ndarray]] = {"f": [], "b": [], "x": [], "i": []}
    for v in vids:
        keep = np.flatnonzero(status[v.start : v.stop] == DONE) if not include_failed else np.arange(len(v))
        rows = slice(v.start * k, v.stop * k)
        parts["f"].append(st.group["crops/features"][rows].reshape(len(v), k, -1)[keep].astype(np.float32))
        parts["b"].append(st.group["crops/boxes"][rows].reshape(len(v), k, 6)[keep])
        parts["x"].append(st.group["crops/flip"][rows].reshape(len(v), k)[keep])
        parts["i"].append(keep + v.start)
    index = np.concatenate(parts["i"])
    paths = st.paths()
    return Cache(
        features=np.concatenate(parts["f"]),
        boxes=np.concatenate(parts["b"]),
        flips=np.concatenate(parts["x"]),
        labels=st.labels()[index].astype(np.int64),
        paths=[paths[i] for i in index],
        index=index,
        attrs=st.attrs,
    )


def cache_nbytes(path: str | Path) -> int:
    """Memory that `load_cache` needs for the whole store (float32 features and boxes)."""
    st = open_store(path)
    return st.n_videos * st.crops_per_video * (st.feature_dim + 6) * 4


def summary(path: str | Path) -> dict[str, Any]:
    """What `vcache inspect` prints: counts by status, failure reasons, dims and provenance."""
    st = open_store(path)
    status = st.status()
    codes = st.meta("reason_code")
    reasons: dict[str, int] = {}
    for c in codes[status == FAILED]:
        name = Reason(int(c)).name.lower()
        reasons[name] = reasons.get(name, 0) + 1
    failed_examples = [
        (p, f"{Reason(int(c)).name.lower()}: {r}")
        for p, c, r, s in zip(st.paths(), codes, st.reasons(), status, strict=True)
        if s == FAILED
    ][:10]
    return {
        "path": str(st.path),
        "videos": st.n_videos,
        "done": int((status == DONE).sum()),
        "failed": int((status == FAILED).sum()),
        "pending": int((status == PENDING).sum()),
        "failure_reasons": reasons,
        "failed_examples": failed_examples,
        "crops_per_video": st.crops_per_video,
        "feature_dim": st.feature_dim,
        "feature_dtype": st.attrs.get("feature_dtype"),
        "map_shape": st.attrs.get("map_shape"),
        "shards": st.n_shards,
        "videos_per_shard": st.videos_per_shard,
        "partial_files": len(st.partial_files()),
        "backbone": st.attrs.get("backbone"),
        "sampling": st.attrs.get("sampling"),
        "manifest": st.attrs.get("manifest"),
        "classes": len(st.attrs.get("class_names") or []),
    }


def export_h5(path: str | Path, out: str | Path) -> Path:
    """Write every array of a store, with the same names and its attributes (as JSON), to one HDF5 file."""
    import h5py

    st = open_store(path)
    out = Path(out)
    with h5py.File(out, "w") as h5:
        h5.attrs["vcache_attrs"] = json.dumps(st.attrs)
        for group in ("videos", "crops"):
            for name, arr in st.group[group].arrays():
                data = arr[:]
                if data.dtype.kind in ("T", "U", "O"):
                    h5.create_dataset(
                        f"{group}/{name}", data=[str(s) for s in data], dtype=h5py.string_dtype()
                    )
                else:
                    h5.create_dataset(f"{group}/{name}", data=data, chunks=True)
    return out


_REQUIRED_ATTRS = ("schema_version", "backbone", "sampling", "manifest", "manifest_hash", "feature_dim")


def verify(path: str | Path, require_complete: bool = False) -> tuple[list[str], dict[str, int]]:
    """Check a store against its contract. Returns (problems, counts); no problems means valid.

    Checks: provenance attributes present; array shapes and dtypes agree with the attributes; every shard
    is all pending or all finished (the write protocol's invariant); every done row finite with a box
    inside [0, 1] and t0 < t1, y0 < y1, x0 < x1; every failed video with a reason; no half-written files.
    Reads one shard at a time, so memory stays bounded for feature-map stores.
    """
    problems: list[str] = []
    try:
        st = open_store(path)
    except StoreError as e:
        return [str(e)], {}
    a = st.attrs
    problems += [f"attribute {k!r} missing" for k in _REQUIRED_ATTRS if a.get(k) in (None, "", {})]
    n, k, d = st.n_videos, st.crops_per_video, st.feature_dim
    g = st.group
    want = {
        "videos/path": (n,),
        "videos/label": (n,),
        "videos/status": (n,),
        "videos/reason_code": (n,),
        "videos/reason": (n,),
        "videos/num_frames": (n,),
        "crops/features": (n * k, d),
        "crops/boxes": (n * k, 6),
        "crops/flip": (n * k,),
    }
    if a.get("map_shape"):
        want["crops/maps"] = (n * k, *a["map_shape"])
    for name, shape in want.items():
        if name not in g:
            problems.append(f"array {name} missing")
        elif tuple(g[name].shape) != shape:
            problems.append(f"array {name} has shape {tuple(g[name].shape)}, expected {shape}")
    if problems:
        return problems, {}
    if str(g["crops/features"].dtype) != str(np.dtype(a.get("feature_dtype", "float16"))):
        problems.append(f"features are {g['crops/features'].dtype}, attributes say {a.get('feature_dtype')}")
    status, codes, reasons = st.status(), st.meta("reason_code"), st.reasons()
    paths = st.paths()
    bad_status = np.flatnonzero(~np.isin(status, (PENDING, DONE, FAILED)))
    problems += [f"{paths[i]}: unknown status {status[i]}" for i in bad_status[:10]]
    for s in range(st.n_shards):
        v = st.shard_videos(s)
        sv = status[v.start : v.stop]
        if (sv == PENDING).any() and not (sv == PENDING).all():
            problems.append(f"shard {s} is half written (some videos pending, some finished)")
        rows = slice(v.start * k, v.stop * k)
        feats = g["crops/features"][rows].astype(np.float32).reshape(len(v), k, d)
        boxes = g["crops/boxes"][rows].reshape(len(v), k, 6)
        for j, i in enumerate(v):
            if status[i] == DONE:
                if not np.isfinite(feats[j]).all():
                    problems.append(f"{paths[i]}: non-finite features")
                b = boxes[j]
                inside = (b >= 0).all() and (b <= 1).all()
                ordered = (
                    (b[:, 0] < b[:, 1]).all() and (b[:, 2] < b[:, 4]).all() and (b[:, 3] < b[:, 5]).all()
                )
                if not (inside and ordered):
                    problems.append(f"{paths[i]}: a box outside [0, 1] or with start >= end")
                if codes[i] != 0:
                    problems.append(f"{paths[i]}: done but has reason code {codes[i]}")
            elif status[i] == FAILED and (codes[i] == 0 or not reasons[i]):
                problems.append(f"{paths[i]}: failed without a reason")
    if "crops/maps" in g and (status == DONE).any():
        i = int(np.flatnonzero(status == DONE)[0])
        if not np.isfinite(g["crops/maps"][i * k : i * k + 1].astype(np.float32)).all():
            problems.append(f"{paths[i]}: non-finite feature map")
    leftovers = st.partial_files() + sorted(st.path.parent.glob(f".{st.path.name}.creating-*"))
    problems += [f"half-written file left by a killed run: {p}" for p in leftovers[:10]]
    counts = {
        "videos": n,
        "done": int((status == DONE).sum()),
        "failed": int((status == FAILED).sum()),
        "pending": int((status == PENDING).sum()),
    }
    if require_complete and counts["pending"]:
        problems.append(f"{counts['pending']} videos still pending")
    return problems, counts
