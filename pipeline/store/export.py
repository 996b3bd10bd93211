"""`vcache export`: a store's done videos for tools that read neither Zarr nor vcache.

- HDF5 (`export_h5`): every array of the store under the same name, its attributes as JSON, and one group
  per done video under `by_video/` (features, boxes, start_s, end_s of its rows). A dense store's crop arrays
  are written compacted (the used rows of each shard, in store order) with `videos/row_start` rewritten to
  the rows of the file.
- npy (`export_npy`): `OUT/<video path without extension>.npy`, the video's rows (rows, D) float32 in time
  order (one row per window, or window-major left/centre/right with 3 spatial crops), and `OUT/windows.csv`
  (video, row, start_s, end_s): the per-video layout that temporal-localization loaders read.

Both read the store one shard at a time, so memory stays at one shard's rows.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from vcache.data.records import DONE
from vcache.store.format import FeatureStore, StoreError, open_store

_NAMES = ("features", "boxes", "flip", "start_s", "end_s")


def iter_video_rows(st: FeatureStore) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(video index, {name: its rows}) of every done video, read a shard at a time."""
    status, paths_n = st.status(), st.n_videos
    starts, counts = st.row_spans()
    names = [n for n in _NAMES if n in st.group["crops"]]
    for s in range(st.n_shards):
        v = st.shard_videos(s)
        if not (status[v.start : v.stop] == DONE).any():
            continue
        rows = st.shard_rows(s, (starts[v.start : v.stop], counts[v.start : v.stop]))
        data = {n: st.group[f"crops/{n}"][rows] for n in names}
        for i in v:
            if status[i] == DONE and counts[i] and i < paths_n:
                r = slice(int(starts[i] - rows.start), int(starts[i] - rows.start + counts[i]))
                yield i, {n: a[r] for n, a in data.items()}


def _stem(path: str) -> str:
    p = PurePosixPath(path.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        raise StoreError(f"video path {path!r} would leave the export folder")
    return str(p.with_suffix(""))


def export_npy(path: str | Path, out: str | Path) -> tuple[Path, int]:
    """Write one .npy per done video and `windows.csv` under `out` (see the module docstring). Returns
    (the csv file, videos written)."""
    st = open_store(path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths, n = st.paths(), 0
    table = out / "windows.csv"
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video", "row", "start_s", "end_s"])
        for i, rows in iter_video_rows(st):
            target = out / f"{_stem(paths[i])}.npy"
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, rows["features"].astype(np.float32))
            t0 = rows.get("start_s", np.full(len(rows["features"]), np.nan))
            t1 = rows.get("end_s", np.full(len(rows["features"]), np.nan))
            for r, (a, b) in enumerate(zip(t0, t1, strict=True)):
                w.writerow([paths[i], r, f"{a:.6f}", f"{b:.6f}"])
            n += 1
    return table, n


def export_h5(path: str | Path, out: str | Path) -> Path:
    """Write every array of a store, with the same names and its attributes (as JSON), plus one group per
    done video under `by_video/`, to one HDF5 file (see the module docstring)."""
    import h5py

    st = open_store(path)
    out = Path(out)
    paths = st.paths()
    with h5py.File(out, "w") as h5:
        h5.attrs["vcache_attrs"] = json.dumps(st.attrs)
        for name, arr in st.group["videos"].arrays():
            data = arr[:]
            if name == "row_start" and st.variable:
                data = _compact_starts(st)
            if data.dtype.kind in ("T", "U", "O"):
                h5.create_dataset(f"videos/{name}", data=[str(s) for s in data], dtype=h5py.string_dtype())
            else:
                h5.create_dataset(f"videos/{name}", data=data, chunks=True)
        for name, arr in st.group["crops"].arrays():
            if st.variable:  # the used rows of each shard's region, in store order
                parts = [arr[st.shard_rows(s)] for s in range(st.n_shards)]
                data = np.concatenate(parts) if parts else arr[:0]
            else:
                data = arr[:]
            h5.create_dataset(f"crops/{name}", data=data, chunks=True if len(data) else None)
        for i, rows in iter_video_rows(st):
            g = h5.create_group(f"by_video/{_stem(paths[i])}")
            for n, a in rows.items():
                g.create_dataset(n, data=a.astype(np.float32) if n == "features" else a)
    return out


def _compact_starts(st: FeatureStore) -> np.ndarray:
    """row_start of a dense store as rows of the compacted crop arrays (-1 where a video has no rows)."""
    starts, counts = st.row_spans()
    out, offset = np.full(st.n_videos, -1, dtype=np.int64), 0
    for s in range(st.n_shards):
        v = st.shard_videos(s)
        rows = st.shard_rows(s, (starts[v.start : v.stop], counts[v.start : v.stop]))
        has = counts[v.start : v.stop] > 0
        out[v.start : v.stop][has] = starts[v.start : v.stop][has] - rows.start + offset
        offset += rows.stop - rows.start
    return out
