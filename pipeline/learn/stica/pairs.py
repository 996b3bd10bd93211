"""The (L_1, L_2) map pairs that head-only STiCA trains on: read from a pairs-mode map store, held in
memory when they fit, otherwise streamed shard by shard."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vcache.store import DONE, FeatureStore, StoreError, open_store
from vcache.store.cache import stage2_source


class PairMaps:
    """The (L_1, L_2) map pairs of a `pairs`-mode store with `--feature-maps`.

    Each epoch draws one of the P pairs of every done video (seeded by (seed, epoch)) and yields batches of
    videos. Maps stay float16 on the host. When the store's maps fit in `memory_bytes` they are read once
    and kept; otherwise each epoch reads the shards again, one at a time, in a random order (a buffer of
    at most about one batch plus one shard), so memory does not grow with the store.
    """

    def __init__(self, path: str | Path, memory_bytes: float = 4e9):
        self.path = Path(path)
        self.store: FeatureStore = open_store(stage2_source(path))  # a local copy with --cache-dir
        attrs = self.store.attrs
        if not self.store.has_maps:
            raise StoreError(f"{path}: no feature maps; extract with --feature-maps (and --mode pairs)")
        sampling = attrs.get("sampling") or {}
        if sampling.get("mode") != "pairs":
            raise StoreError(
                f"{path}: a {sampling.get('mode')!r}-mode store; STiCA trains on a pairs-mode store "
                "(vcache extract ... --mode pairs --feature-maps)"
            )
        k = self.store.crops_per_video
        if k % 2 or k < 2:
            raise StoreError(f"{path}: {k} crops per video is not a whole number of pairs")
        self.pairs = k // 2
        self.map_shape = tuple(int(v) for v in attrs["map_shape"])
        self.done = self.store.status() == DONE
        if self.done.sum() < 2:
            raise StoreError(f"{path}: STiCA needs at least 2 done videos (the others are the negatives)")
        row_bytes = int(np.prod(self.map_shape)) * np.dtype(self.store.group["crops/maps"].dtype).itemsize
        self.total_bytes = int(self.done.sum()) * k * row_bytes
        self.in_memory = self.total_bytes <= memory_bytes
        self._cache: dict[int, np.ndarray] = {}

    @property
    def n_videos(self) -> int:
        return int(self.done.sum())

    def shard_maps(self, shard: int) -> np.ndarray:
        """(videos in shard, K, T', H', W', C) float16, read in one zarr call (cached when in memory)."""
        if shard in self._cache:
            return self._cache[shard]
        vids = self.store.shard_videos(shard)
        k = self.store.crops_per_video
        maps = self.store.group["crops/maps"][vids.start * k : vids.stop * k]
        maps = np.asarray(maps).reshape(len(vids), k, *self.map_shape)
        if self.in_memory:
            self._cache[shard] = maps
        return maps

    def batches(
        self, epoch: int, batch_size: int, seed: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (maps of L_1 (B, T', H', W', C), maps of L_2, store rows (B,)) for one epoch."""
        rng = np.random.default_rng([seed, epoch, 0])
        pick = rng.integers(0, self.pairs, size=self.store.n_videos)
        buf_a: list[np.ndarray] = []
        buf_b: list[np.ndarray] = []
        buf_v: list[np.ndarray] = []
        held = 0
        for s in rng.permutation(self.store.n_shards):
            vids = np.arange(self.store.shard_videos(int(s)).start, self.store.shard_videos(int(s)).stop)
            keep = self.done[vids]
            if not keep.any():
                continue
            maps = self.shard_maps(int(s))[keep]
            p = pick[vids[keep]]
            rows = np.arange(len(p))
            buf_a.append(maps[rows, 2 * p])
            buf_b.append(maps[rows, 2 * p + 1])
            buf_v.append(vids[keep])
            held += len(p)
            if held >= batch_size:
                a, b, v = np.concatenate(buf_a), np.concatenate(buf_b), np.concatenate(buf_v)
                order = rng.permutation(len(v))
                full = (len(v) // batch_size) * batch_size
                for i in range(0, full, batch_size):
                    sel = order[i : i + batch_size]
                    yield a[sel], b[sel], v[sel]
                rest = order[full:]
                buf_a, buf_b, buf_v, held = [a[rest]], [b[rest]], [v[rest]], len(rest)
        if held >= 2:  # a last, smaller batch (one lone video would have no negatives)
            yield np.concatenate(buf_a), np.concatenate(buf_b), np.concatenate(buf_v)
