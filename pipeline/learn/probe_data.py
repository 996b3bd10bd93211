"""What a probe trains and scores on: store pairs, labelled videos, overlap checks, class-balanced subsets and
the validation split, and the name of a run's result files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from vcache.store import Cache, StoreError, check_compatible, load_cache


def load_pair(
    train_path: str | Path, test_path: str | Path, allow_mismatch: bool = False, features: str = "video"
) -> tuple[Cache, Cache]:
    """Load a train and a test store, refusing features of different backbones, weights, preprocessing or
    clips (vcache.store.check_compatible; `allow_mismatch` overrides all but the feature dim). `features`:
    video, audio (`extract --audio-backbone`) or both; audio of two different audio encoders is refused
    unless `allow_mismatch`."""
    train = load_cache(train_path, features=features)
    test = load_cache(test_path, features=features)
    check_compatible(
        train.attrs, test.attrs, f"train store {train_path}", f"test store {test_path}", allow_mismatch
    )
    if features != "video" and not allow_mismatch:
        a, b = (c.attrs.get("audio_backbone", {}) for c in (train, test))
        if (a.get("state_file"), a.get("dim")) != (b.get("state_file"), b.get("dim")):
            raise StoreError(
                f"train and test audio features come from different audio encoders ({a.get('state_file')} "
                f"vs {b.get('state_file')}); --allow-mismatch to probe anyway"
            )
    if train.class_names and test.class_names and train.class_names != test.class_names:
        raise StoreError("train and test stores have different class_names")
    return train, test


def num_classes(train: Cache, test: Cache) -> int:
    names = train.class_names or test.class_names
    top = int(max(train.labels.max(initial=-1), test.labels.max(initial=-1))) + 1
    return max(len(names), top, 1)


def labelled(labels: np.ndarray) -> np.ndarray:
    """Rows whose label is known (the store writes -1 for "unknown"): the only ones a probe trains on or
    scores."""
    return np.flatnonzero(np.asarray(labels) >= 0)


def video_ids(paths: list[str]) -> np.ndarray:
    """64-bit digests of videos' relative paths: what a SCALE checkpoint keeps to detect overlap."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(p.encode(), digest_size=8).digest(), "little") for p in paths],
        dtype=np.uint64,
    )


def check_overlap(train: Cache, test: Cache, agg_meta: dict[str, Any] | None, allow: bool) -> dict[str, int]:
    """Refuse test videos that are also train videos, or that the aggregator was trained on, unless `allow`.

    Videos are matched by their path relative to the dataset root (the manifest's). Returns the counts, which
    the result records either way."""
    test_ids = video_ids(test.paths)
    counts = {"train_test": int(np.isin(test_ids, video_ids(train.paths)).sum())}
    if agg_meta is not None and agg_meta.get("video_ids") is not None:
        counts["aggregator_test"] = int(np.isin(test_ids, np.asarray(agg_meta["video_ids"])).sum())
    if not allow:
        if counts["train_test"]:
            raise StoreError(
                f"{counts['train_test']} of the {len(test.paths)} test videos are also train videos (e.g. "
                f"{_first_shared(train.paths, test.paths)}): pass --allow-overlap if this is meant"
            )
        if counts.get("aggregator_test"):
            raise StoreError(
                f"the aggregator was trained on {counts['aggregator_test']} of the {len(test.paths)} test "
                "videos: pass --allow-overlap if this is meant"
            )
    return counts


def _first_shared(a: list[str], b: list[str]) -> str:
    return sorted(set(a) & set(b))[0]


def low_shot_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A class-balanced subset: round(fraction * n_c) videos of each class c, at least one (SCALE Table 7)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"low-shot fraction {fraction}: must be in (0, 1]")
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.append(rng.choice(idx, size=max(1, round(fraction * len(idx))), replace=False))
    return np.sort(np.concatenate(keep))


def train_val_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of the train videos (whole videos, so no clip of a val video is trained on)."""
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(fraction * len(idx))) if len(idx) > 1 else 0
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


def run_name(name: str, settings: dict[str, Any], provenance: dict[str, Any]) -> str:
    """`<probe>-s<seed>-<8 hex>`: runs that differ in any setting, store or aggregator get different result
    files in one folder; rerunning the same run rewrites its own."""
    # the default features leave the names of runs from before the option unchanged
    keep = {k: v for k, v in settings.items() if k != "device" and (k, v) != ("features", "video")}
    key = json.dumps([keep, provenance], sort_keys=True, default=str)
    return f"{name}-s{settings.get('seed', 0)}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def protocol_warnings(train: Cache, test: Cache) -> list[str]:
    """Warnings about stores used against the protocol (they do not stop the probe)."""
    out = []
    if ((test.attrs.get("sampling") or {}).get("mode")) == "train":
        out.append(
            "the test store is a train-mode store (random augmented crops); the protocol tests on eval crops"
        )
    if ((train.attrs.get("sampling") or {}).get("mode")) == "pairs":
        out.append("the train store is a pairs-mode store (STiCA's training crops), not eval crops")
    return out
