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
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from vcache.data.records import DONE, FAILED, PENDING, VideoMeta
from vcache.store.location import Remote, location

SCHEMA_VERSION = 2  # 2: per-video row offsets and counts, per-row times (docs/store.md); 1 stays readable
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
# Per-video arrays of schema 2: where a video's rows are (global row, count; -1 / 0 without rows).
_ROW_ARRAYS = {"row_start": ("int64", -1), "row_count": ("int32", 0)}


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


class FeatureStore:
    """A handle on one store. Open with `open_store` or make with `create_store`."""

    def __init__(self, path: str | Path | Remote, group: zarr.Group):
        self.path = location(path)  # a Path, or a Remote (str() gives its URL)
        self.group = group
        self.attrs: dict[str, Any] = dict(group.attrs)
        if self.attrs.get("schema_version") not in (1, SCHEMA_VERSION):
            raise StoreError(
                f"{self.path}: schema_version {self.attrs.get('schema_version')!r}, "
                f"expected 1 or {SCHEMA_VERSION}"
            )
        self.schema_version = int(self.attrs["schema_version"])
        self.n_videos = int(self.attrs["n_videos"])
        self.crops_per_video = int(self.attrs["crops_per_video"])  # 0: a variable number (dense)
        self.videos_per_shard = int(self.attrs["videos_per_shard"])
        self.feature_dim = int(self.attrs["feature_dim"])
        self.n_shards = max(1, math.ceil(self.n_videos / self.videos_per_shard))
        self.variable = self.crops_per_video == 0
        fixed = self.videos_per_shard * self.crops_per_video
        self.rows_per_shard = int(self.attrs.get("rows_per_shard") or fixed)

    # -- geometry -------------------------------------------------------------------------------
    def shard_videos(self, shard: int) -> range:
        v0 = shard * self.videos_per_shard
        return range(v0, min(self.n_videos, v0 + self.videos_per_shard))

    def shard_rows(self, shard: int, spans: tuple[np.ndarray, np.ndarray] | None = None) -> slice:
        """The crop rows shard `shard` has written: fixed K, all of its videos' rows; dense, the used start
        of its region (from its videos' `spans`, read when not given)."""
        vids = self.shard_videos(shard)
        if not self.variable:
            return slice(vids.start * self.crops_per_video, vids.stop * self.crops_per_video)
        r0 = shard * self.rows_per_shard
        starts, counts = spans if spans is not None else self.row_spans(vids)
        used = int((starts + counts)[counts > 0].max()) - r0 if (counts > 0).any() else 0
        return slice(r0, r0 + used)

    def row_spans(self, vids: range | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(row_start, row_count) of videos `vids` (all by default): video i's rows in the crop arrays are
        `row_start[i] .. row_start[i] + row_count[i] - 1`; count 0 for pending and failed videos. A schema 1
        store has no such arrays: K rows at i * K for done videos."""
        vids = vids if vids is not None else range(self.n_videos)
        if self.schema_version >= 2:
            starts = self.group["videos/row_start"][vids.start : vids.stop].astype(np.int64)
            return starts, self.group["videos/row_count"][vids.start : vids.stop].astype(np.int64)
        done = self.group["videos/status"][vids.start : vids.stop] == DONE
        k = self.crops_per_video
        return np.arange(vids.start, vids.stop, dtype=np.int64) * k, np.where(done, k, 0).astype(np.int64)

    def crop_names(self) -> list[str]:
        """The per-row arrays under `crops/` in write order."""
        names = ["features", "boxes", "flip"] + (["start_s", "end_s"] if self.has_times else [])
        return names + (["maps"] if self.has_maps else [])

    @property
    def has_maps(self) -> bool:
        return "maps" in self.group["crops"]

    @property
    def has_times(self) -> bool:
        return "start_s" in self.group["crops"]

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
        times: np.ndarray | None = None,
        spans: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Write one whole shard: crop arrays first, then the per-video arrays, status last.

        Fixed K: features (n*K, D), boxes (n*K, 6), flips (n*K,), times (n*K, 2) start/end seconds; rows of
        failed videos are written too (zeros, boxes of -1) so every shard file is complete. Dense: the rows
        of the shard's region from its start, and `spans` (start within the region, count) per video. A meta
        of None is a video not finished yet (a graceful stop writes the finished part of a shard): it stays
        pending, and a shard with a pending video gets no digest (an empty one) until it is written complete.
        """
        vids = self.shard_videos(shard)
        n, k = len(vids), self.crops_per_video
        if len(metas) != n:
            raise StoreError(f"shard {shard}: expected {n} videos, got {len(metas)}")
        metas = [m if m is not None else VideoMeta(status=PENDING) for m in metas]
        done = np.array([m.status == DONE for m in metas])
        if self.variable:
            if spans is None or len(features) > self.rows_per_shard:
                raise StoreError(f"shard {shard}: {len(features)} rows, more than its {self.rows_per_shard}")
            r0 = shard * self.rows_per_shard
            starts, counts = (np.asarray(x, dtype=np.int64) for x in spans)
        else:
            if features.shape != (n * k, self.feature_dim):
                raise StoreError(f"shard {shard}: expected {(n * k, self.feature_dim)} features")
            r0, starts, counts = vids.start * k, np.arange(n, dtype=np.int64) * k, np.full(n, k, np.int64)
        counts = np.where(done, counts, 0)
        starts = np.where(counts > 0, starts + r0, -1)
        rows = slice(r0, r0 + len(features))
        data = self._shard_data_to_write(features, boxes, flips, metas, maps, times, (starts, counts))
        for name, a in data.items():  # crop arrays first, per-video ones next, status last
            if name != "videos/status":
                self.group[name][rows if name.startswith("crops/") else slice(vids.start, vids.stop)] = a
        if "shards" in self.group:  # before the status: a shard marked finished always has its digest
            partly = (data["videos/status"] == PENDING).any()
            self.group["shards/digest"][shard] = "" if partly else shard_digest(data)
        self.group["videos/status"][vids.start : vids.stop] = data["videos/status"]

    def _shard_data_to_write(self, features, boxes, flips, metas, maps, times, spans) -> dict:
        g, v = self.group, self.group["videos"]
        data = {
            "crops/features": features.astype(g["crops/features"].dtype, copy=False),
            "crops/boxes": boxes.astype(np.float32, copy=False),
            "crops/flip": flips.astype(bool, copy=False),
        }
        if self.has_times:
            t = np.full((len(features), 2), np.nan) if times is None else np.asarray(times, dtype=np.float64)
            data["crops/start_s"], data["crops/end_s"] = t[:, 0].copy(), t[:, 1].copy()
        if maps is not None:
            data["crops/maps"] = maps.astype(g["crops/maps"].dtype, copy=False)
        data["videos/reason"] = np.array([m.reason[:200] for m in metas], dtype=str)
        if "warnings" in v:
            data["videos/warnings"] = np.array([m.warning[:300] for m in metas], dtype=str)
        for name in (*_META_ARRAYS, *_RECORD_ARRAYS):
            if name in v and name != "status":
                data[f"videos/{name}"] = np.array([getattr(m, name) for m in metas]).astype(v[name].dtype)
        if "row_start" in v:
            data["videos/row_start"], data["videos/row_count"] = spans[0], spans[1].astype(np.int32)
        data["videos/status"] = np.array([m.status for m in metas], dtype=np.uint8)
        return data

    def shard_data(self, shard: int) -> dict[str, np.ndarray]:
        """Read back what `write_shard` wrote for `shard` (the arrays its digest covers)."""
        vids = self.shard_videos(shard)
        v = self.group["videos"]
        per_video = ["reason"] + (["warnings"] if "warnings" in v else [])
        per_video += [n for n in (*_META_ARRAYS, *_RECORD_ARRAYS, *_ROW_ARRAYS) if n in v and n != "status"]
        out = {f"videos/{n}": v[n][vids.start : vids.stop] for n in per_video + ["status"]}
        spans = (out["videos/row_start"], out["videos/row_count"]) if "row_start" in v else None
        rows = self.shard_rows(shard, spans)
        crops = {f"crops/{n}": self.group[f"crops/{n}"][rows] for n in self.crop_names()}
        return {**crops, **out}

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
