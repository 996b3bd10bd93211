"""Synthetic feature stores for the stage-2 tests (aggregator, probes, k-NN); no video is decoded.

Classes come in two families:
- appearance ("app0", "app1", ...): every clip of a video carries the class's own mean vector;
- order ("ab", "ba"): clips whose box starts in the first half of the video (t0 < 0.5) carry event A and the
  others event B ("ab"), or the reverse ("ba"). Each clip alone, or the mean over clips, looks the same for
  both classes, so only a model that reads the boxes' times (an order-aware model) can tell them apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vcache.store import DONE, VideoMeta, create_store

# A SCALE small enough for tests: ScaleConfig(feature_dim=16, **TINY_SCALE).
TINY_SCALE = {
    "width": 32,
    "depth": 2,
    "proj_dim": 16,
    "batch_size": 16,
    "target_head": (2, 32),
    "pred_head": (2, 32),
}


def backbone_attrs(name: str = "synthetic-bb", sha: str = "0" * 64, dim: int = 16) -> dict:
    return {
        "name": name,
        "checkpoint_sha256": sha,
        "feature_dim": dim,
        "preprocessing": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "size": 64, "frames": 16},
    }


def make_store(
    path: str | Path,
    n_videos: int = 48,
    n_app: int = 2,
    crops: int = 16,
    dim: int = 16,
    mode: str = "train",
    seed: int = 0,
    noise: float = 0.5,
    backbone: dict | None = None,
    videos_per_shard: int = 16,
) -> Path:
    """Write a store of `n_videos` whose labels cycle over n_app appearance classes then "ab" and "ba".

    Feature = signal + N(0, noise^2): appearance classes use a fixed random unit vector times 2; order
    classes use event A or B (two more fixed vectors) by the clip's time. The class vectors depend only on
    `dim` (seed 1234), so a train and a test store made with different `seed`s share them.
    """
    class_names = [f"app{i}" for i in range(n_app)] + ["ab", "ba"]
    families = {c: ("order" if c in ("ab", "ba") else "appearance") for c in class_names}
    protos = np.random.default_rng(1234).standard_normal((n_app + 2, dim)).astype(np.float32)
    protos = 2.0 * protos / np.linalg.norm(protos, axis=1, keepdims=True)
    ev_a, ev_b = protos[n_app], protos[n_app + 1]
    rng = np.random.default_rng(seed)
    labels = np.arange(n_videos) % len(class_names)
    # The seed names the videos: stores made with one seed hold the same videos (overlap), others do not.
    paths = [f"{class_names[y]}/s{seed}_v{i:04d}.mp4" for i, y in enumerate(labels)]
    k = crops
    boxes = np.zeros((n_videos, k, 6), np.float32)
    if mode == "eval":  # uniformly spaced clips, as the 5 x 3 eval sampling
        t0 = np.broadcast_to(np.linspace(0.0, 0.8, k, dtype=np.float32), (n_videos, k)).copy()
    else:
        t0 = rng.uniform(0.0, 0.8, (n_videos, k)).astype(np.float32)
    boxes[..., 0], boxes[..., 1] = t0, t0 + 0.2
    y0 = rng.uniform(0, 0.3, (n_videos, k))
    x0 = rng.uniform(0, 0.3, (n_videos, k))
    boxes[..., 2], boxes[..., 3], boxes[..., 4], boxes[..., 5] = y0, x0, y0 + 0.7, x0 + 0.7
    feats = rng.standard_normal((n_videos, k, dim)).astype(np.float32) * noise
    for i, y in enumerate(labels):
        name = class_names[y]
        if name in ("ab", "ba"):
            first = t0[i] < 0.4  # clip centre before the middle of the video
            a_first = name == "ab"
            feats[i] += np.where((first == a_first)[:, None], ev_a, ev_b)
        else:
            feats[i] += protos[y]
    flips = rng.random((n_videos, k)) < 0.5
    bb = backbone or backbone_attrs(dim=dim)
    attrs = {
        "backbone": bb,
        "sampling": {"mode": mode, "crops_per_video": k},
        "class_names": class_names,
        "class_families": families,
        "manifest": {"name": f"synthetic-{mode}-{seed}"},
    }
    st = create_store(path, paths, labels, k, dim, attrs, videos_per_shard=videos_per_shard)
    for s in range(st.n_shards):
        vids = st.shard_videos(s)
        sl = slice(vids.start, vids.stop)
        metas = [
            VideoMeta(status=DONE, num_frames=64, decoded_frames=64, fps=25.0, height=64, width=64)
        ] * len(vids)
        st.write_shard(s, feats[sl].reshape(-1, dim), boxes[sl].reshape(-1, 6), flips[sl].reshape(-1), metas)
    return Path(path)
