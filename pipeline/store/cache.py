"""Stage 2's view of a store: its done videos loaded into memory once (never touches video)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vcache.data.records import DONE
from vcache.store.format import StoreError, open_store
from vcache.store.location import is_remote

READ_THREADS = 16  # (shard, array) objects read at once (VCACHE_READ_THREADS); each is a whole shard


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


def read_threads() -> int:
    raw = os.environ.get("VCACHE_READ_THREADS", "")
    try:
        return max(1, int(raw)) if raw else READ_THREADS
    except ValueError:
        raise ValueError(f"VCACHE_READ_THREADS must be a whole number, got {raw!r}") from None


def stage2_source(path: str | Path) -> str | Path:
    """Where stage 2 reads `path` from: a verified local copy of a remote store when a cache folder is set
    (`vcache --cache-dir`, or VCACHE_CACHE_DIR; see vcache.store.mirror), else the store itself."""
    folder = os.environ.get("VCACHE_CACHE_DIR", "")
    if not folder or not is_remote(path):
        return path
    from vcache.store.mirror import local_copy

    return local_copy(path, Path(folder))


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


FEATURES = ("video", "audio", "both")


def load_cache(
    path: str | Path,
    include_failed: bool = False,
    shards: list[int] | None = None,
    rows_per_video: int | None = None,
    features: str = "video",
) -> Cache:
    """Load the features, boxes and labels of every done video (of the shards named by `shards`, when given:
    streaming stage 2 loads a group of shards at a time).

    Reads go shard by shard, whole: each (shard, array) is one object, as zarr chunks and shards end on
    shard boundaries, and `read_threads()` of them are in flight at once, so a bucket's round trip is paid
    once per wave rather than once per object. Rows land in arrays allocated once; shards without a done
    video are not read. (Reading rows one at a time through zarr is 15-90x slower than memory.)

    A store with a variable number of rows per video (dense) gives each video K rows spread evenly over its
    rows (`pick_rows`; K from `dense_k`), so stage 2 sees (n, K, D) as for any store: probes pool them,
    SCALE samples its sets from them with their boxes.

    `features`: "video" (`crops/features`), "audio" (`crops/audio`, written by `vcache extract
    --audio-backbone`) or "both" (the two concatenated, video first). A row without audio (a video without
    an audio stream) reads as zeros.
    """
    if features not in FEATURES:
        raise ValueError(f"features {features!r}: choose video, audio or both")
    st = open_store(stage2_source(path))
    if features != "video" and "audio" not in st.group["crops"]:
        raise StoreError(f"{path} has no audio features: extract it with --audio-backbone")
    if st.variable:
        cache = _load_variable(st, include_failed, shards, dense_k(st, rows_per_video))
    else:
        cache = _load_fixed(st, include_failed, shards)
    if features == "video":
        return cache
    audio = _audio_rows(st, cache.index, cache.features.shape[1])
    cache.features = audio if features == "audio" else np.concatenate([cache.features, audio], axis=2)
    return cache


def _audio_rows(st, index: np.ndarray, k: int) -> np.ndarray:
    """(n, k, D_a) float32 audio features of videos `index`, rows picked as for the video features (fixed:
    all k; dense: `pick_rows`); NaN rows (no audio stream) and videos without rows as zeros."""
    whole = np.asarray(st.group["crops/audio"][:], dtype=np.float32)  # rows x 512 at most: small
    starts, counts = st.row_spans()
    out = np.zeros((len(index), k, whole.shape[1]), np.float32)
    for j, i in enumerate(index):
        if counts[i]:
            rows = np.arange(k) if not st.variable else pick_rows(int(counts[i]), k)
            out[j] = whole[starts[i] + rows]
    return np.nan_to_num(out, nan=0.0)


def _load_fixed(st, include_failed: bool, shards: list[int] | None) -> Cache:
    k = st.crops_per_video
    todo = list(dict.fromkeys(range(st.n_shards) if shards is None else shards))
    spans = [st.shard_videos(s) for s in todo]
    tail = {"features": (k, st.feature_dim), "boxes": (k, 6), "flip": (k,)}
    with ThreadPoolExecutor(max_workers=max(2, min(read_threads(), 3 * len(todo)))) as pool:
        paths, labels = pool.submit(st.paths), pool.submit(st.labels)  # meanwhile: one round trip each
        names = [*(f"crops/{a}" for a in tail), "videos/status"]
        arrays = dict(zip([*tail, "status"], pool.map(lambda a: st.group[a], names), strict=True))
        status = pool.map(lambda v: arrays["status"][v.start : v.stop], spans)
        keeps = [
            np.arange(len(v)) if include_failed else np.flatnonzero(s == DONE)
            for v, s in zip(spans, status, strict=True)
        ]
        at = np.cumsum([0] + [len(keep) for keep in keeps])
        out = {a: np.empty((int(at[-1]), *t), bool if a == "flip" else np.float32) for a, t in tail.items()}

        def read(job: tuple[int, str]) -> None:
            i, a = job
            v = spans[i]
            rows = arrays[a][v.start * k : v.stop * k]
            out[a][at[i] : at[i + 1]] = rows.reshape(len(v), *tail[a])[keeps[i]]

        list(pool.map(read, [(i, a) for i in range(len(todo)) if len(keeps[i]) for a in tail]))
        firsts = [v.start for v in spans]
        index = np.concatenate([np.zeros(0, int), *map(np.add, keeps, firsts)])
        paths, labels = paths.result(), labels.result()
    return Cache(
        features=out["features"],
        boxes=out["boxes"],
        flips=out["flip"],
        labels=labels[index].astype(np.int64),
        paths=[paths[i] for i in index],
        index=index,
        attrs=st.attrs,
    )


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
