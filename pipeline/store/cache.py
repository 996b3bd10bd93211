"""Stage 2's view of a store: its done videos loaded into memory once (never touches video)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vcache.data.records import DONE
from vcache.store.format import open_store


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


MAX_DENSE_ROWS = 32  # rows a video of a dense store brings to stage 2 by default (memory: n x 32 x D)


def pick_rows(count: int, k: int) -> np.ndarray:
    """`k` of a video's `count` rows, spread evenly: the row at the centre of each of k equal parts (rows
    repeat when count < k, each about equally often)."""
    return np.floor((np.arange(k) + 0.5) * count / k).astype(np.int64)


def dense_k(st, rows_per_video: int | None = None) -> int:
    """Rows per video stage 2 takes from a dense store: `rows_per_video`, else the most rows a done video
    has, at most MAX_DENSE_ROWS (the same for every group of shards of one store)."""
    if rows_per_video:
        return int(rows_per_video)
    counts = st.row_spans()[1]
    return int(max(1, min(MAX_DENSE_ROWS, counts.max(initial=1))))


def load_cache(
    path: str | Path,
    include_failed: bool = False,
    shards: list[int] | None = None,
    rows_per_video: int | None = None,
) -> Cache:
    """Load the features, boxes and labels of every done video in one read per array (per shard when
    `shards` names a subset: streaming stage 2 loads a group of shards at a time).

    A store with a variable number of rows per video (dense) gives each video K rows spread evenly over its
    rows (`pick_rows`; K from `dense_k`), so stage 2 sees (n, K, D) as for any store: probes pool them,
    SCALE samples its sets from them with their boxes. Reading rows one at a time through zarr is 15-90x
    slower than memory, so stage 2 loads once.
    """
    st = open_store(path)
    if st.variable:
        return _load_variable(st, include_failed, shards, dense_k(st, rows_per_video))
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
    return _cache(st, parts)


def _cache(st, parts: dict[str, list[np.ndarray]]) -> Cache:
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


def _load_variable(st, include_failed: bool, shards: list[int] | None, k: int) -> Cache:
    status = st.status()
    starts, counts = st.row_spans()
    parts: dict[str, list[np.ndarray]] = {"f": [], "b": [], "x": [], "i": []}
    for s in shards if shards is not None else range(st.n_shards):
        v = st.shard_videos(s)
        rows = st.shard_rows(s, (starts[v.start : v.stop], counts[v.start : v.stop]))
        f, b, x = (st.group[f"crops/{n}"][rows] for n in ("features", "boxes", "flip"))
        keep = np.arange(v.start, v.stop)
        keep = keep if include_failed else keep[status[keep] == DONE]
        out_f = np.zeros((len(keep), k, st.feature_dim), np.float32)
        out_b, out_x = np.full((len(keep), k, 6), -1.0, np.float32), np.zeros((len(keep), k), bool)
        for j, i in enumerate(keep):
            if counts[i]:
                r = starts[i] - rows.start + pick_rows(int(counts[i]), k)
                out_f[j], out_b[j], out_x[j] = f[r], b[r], x[r]
        parts["f"].append(out_f)
        parts["b"].append(out_b)
        parts["x"].append(out_x)
        parts["i"].append(keep)
    return _cache(st, parts)


def cache_nbytes(path: str | Path) -> int:
    """Memory that `load_cache` needs for the whole store (float32 features and boxes)."""
    st = open_store(path)
    k = dense_k(st) if st.variable else st.crops_per_video
    return st.n_videos * k * (st.feature_dim + 6) * 4
