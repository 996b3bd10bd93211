"""STiCA's feature crops and temporal-attention pooling head, trained on cached feature maps.

Space-Time Crop & Attend (Patrick et al., "STiCA"): from two large input crops L_1, L_2 of a video (a
`pairs`-mode store, rows 2p and 2p + 1 share a temporal extent), many more views are made by cropping the
trunk's T' x H' x W' feature map (Sec. 3.2, eq. 5), each view is pooled by a small temporal transformer
(Sec. 3.3) and the within-video contrastive loss (eq. 6) pulls views of L_1 and L_2 together.

Here the trunk is frozen: the maps come from the store, never from video, so this is **head-only STiCA
(trunk frozen)**; the paper trains the trunk too (see `vcache.pretrain_stica` for that setting).

Pieces (each usable alone):
- `feature_crop`: eq. 5, an integer slice of a channels-last map; no ROI-align, no resize.
- `ViewConfig` / `sample_views`: the view set T_i of one large crop: m medium and n small views, each a crop
  in space (full time) or in time (full space). Default = the paper's best (Table 1b, Sec. 6.1.1):
  2 x 6^2 + 4 x 4^2 in space and 2 x 3 + 1 x 2 in time, so m = 4 and n = 5.
- `TemporalHead`: spatial average, then a temporal transformer (2 layers x 4 heads x 512, Sec. 3.3 and
  6.3) over the per-time-step tokens with padding masks, then the projection 512 -> 512 -> 256 (Sec. 6.1).
- `within_video_loss`: eq. 6 as a pure function.
- `train_stica` / `load_head` / `embed_maps` / `video_embeddings` / `export_embeddings`: training from a
  map store (streamed shard by shard when it does not fit in memory), checkpoints, and per-crop embeddings
  written as an ordinary feature store that `vcache probe` evaluates like any other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vcache.devices import resolve_device
from vcache.scale import check_compatible
from vcache.stica.head import HeadConfig, TemporalHead
from vcache.stica.loss import n_loss_terms, pair_mask, within_video_loss
from vcache.stica.pairs import PairMaps
from vcache.stica.train import (
    HEAD_FORMAT,
    MODE_NAME,
    SticaConfig,
    SticaResult,
    is_stica_checkpoint,
    load_checkpoint,
    train_step,
    train_stica,
)
from vcache.stica.views import View, ViewConfig, default_view_config, feature_crop, sample_views
from vcache.store import DONE, FeatureStore, StoreError, VideoMeta, create_store, open_store


def load_head(path: str | Path) -> tuple[TemporalHead, dict[str, Any]]:
    """The trained head (eval mode) and the checkpoint's metadata (config, provenance, history)."""
    ckpt = load_checkpoint(path)
    cfg = SticaConfig.from_dict(ckpt["config"])
    head = TemporalHead(cfg.head_config())
    head.load_state_dict(ckpt["model"])
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer")}
    meta["sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return head.eval(), meta


def embed_maps(head: TemporalHead, maps: np.ndarray, device: str = "auto", batch: int = 256) -> np.ndarray:
    """Whole-map representations (the transformer's CLS output, before the projection, as the
    representation used downstream in contrastive learning): (n, T', H', W', C) -> (n, width) float32."""
    dev = resolve_device(device)
    head = head.to(dev).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(maps), batch):
            x = torch.from_numpy(np.asarray(maps[i : i + batch])).to(dev).float()
            out.append(head.embed(x).cpu().numpy())
    if not out:
        return np.zeros((0, head.cfg.width), np.float32)
    return np.concatenate(out).astype(np.float32)


def _check_store_for_head(meta: dict[str, Any], store: FeatureStore, path: str | Path) -> None:
    if not store.has_maps:
        raise StoreError(f"{path}: no feature maps; extract it with --feature-maps to embed it with a head")
    check_compatible(meta["provenance"], store.attrs, "the head's training store", f"store {path}")
    c = int(store.attrs["map_shape"][-1])
    if c != meta["config"]["in_dim"]:
        raise StoreError(f"{path}: maps have {c} channels, the head expects {meta['config']['in_dim']}")


def iter_crop_embeddings(
    head_path: str | Path, store_path: str | Path, device: str = "auto"
) -> Iterator[tuple[int, np.ndarray]]:
    """(shard, per-crop embeddings (shard videos * K, width)) for every shard of a map store, streamed."""
    head, meta = load_head(head_path)
    st = open_store(store_path)
    _check_store_for_head(meta, st, store_path)
    k = st.crops_per_video
    for s in range(st.n_shards):
        vids = st.shard_videos(s)
        maps = st.group["crops/maps"][vids.start * k : vids.stop * k]
        yield s, embed_maps(head, maps, device)


def video_embeddings(
    head_path: str | Path, store_path: str | Path, device: str = "auto"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-video embeddings: the mean of the head's per-crop embeddings over each done video's crops.

    Returns (embeddings (n_done, width), labels (n_done,), store rows (n_done,))."""
    st = open_store(store_path)
    k = st.crops_per_video
    parts = [
        e.reshape(-1, k, e.shape[-1]).mean(axis=1)
        for _, e in iter_crop_embeddings(head_path, st.path, device)
    ]
    emb = np.concatenate(parts)
    keep = np.flatnonzero(st.status() == DONE)
    return emb[keep], st.labels()[keep].astype(np.int64), keep


def head_backbone_attrs(bb: dict[str, Any], meta: dict[str, Any], head_path: str | Path) -> dict[str, Any]:
    """The `backbone` attribute of an embedding store: trunk + head, so that `check_compatible` keeps stores
    embedded with different heads (or trunks) apart, and stores embedded with the same head together."""
    trunk_sha = bb.get("checkpoint_sha256") or ""
    combined = hashlib.sha256(f"{trunk_sha}|{meta['sha256']}".encode()).hexdigest()
    return {
        "name": f"{bb.get('name')}+stica_head",
        "checkpoint": str(head_path),
        "checkpoint_sha256": combined,
        "feature_dim": int(meta["config"]["width"]),
        "preprocessing": bb.get("preprocessing"),
        "trunk": bb,
        "stica_head": {
            "path": str(head_path),
            "sha256": meta["sha256"],
            "mode": MODE_NAME,
            "config": meta["config"],
            "epochs_done": meta["epochs_done"],
            "trained_on": meta["provenance"],
        },
    }


def export_embeddings(
    head_path: str | Path, store_path: str | Path, out: str | Path, device: str = "auto"
) -> Path:
    """Write a feature store whose per-crop features are the head's embeddings of each crop's whole map.

    Boxes, flips, per-video records and labels are copied from the map store, so `vcache probe linear |
    knn (--retrieval)` evaluate the head like any other features (per-crop softmax / mean over crops).
    The store's `backbone` attribute names trunk and head (see `head_backbone_attrs`); train and test
    stores embedded with the same head are compatible, others are refused by the probes.
    """
    _, meta = load_head(head_path)
    src = open_store(store_path)
    _check_store_for_head(meta, src, store_path)
    width = int(meta["config"]["width"])
    attrs = {
        k: v
        for k, v in src.attrs.items()
        if k not in ("schema_version", "n_videos", "crops_per_video", "videos_per_shard", "feature_dim")
        and k not in ("feature_dtype", "map_shape", "manifest_hash")
    }
    attrs.update(
        backbone=head_backbone_attrs(src.attrs.get("backbone") or {}, meta, head_path),
        feature_maps=False,
        embedded_from=str(Path(store_path)),
        stica_mode=MODE_NAME,
    )
    dst = create_store(
        out,
        src.paths(),
        src.labels(),
        src.crops_per_video,
        width,
        attrs,
        videos_per_shard=src.videos_per_shard,
        feature_dtype="float32",
    )
    k = src.crops_per_video
    v = src.group["videos"]
    reasons = src.reasons()
    for s, emb in iter_crop_embeddings(head_path, store_path, device):
        vids = src.shard_videos(s)
        sl = slice(vids.start, vids.stop)
        cols = {name: v[name][sl] for name in ("status", "reason_code", "num_frames", "decoded_frames")}
        cols.update({name: v[name][sl] for name in ("fps", "height", "width")})
        metas = [
            VideoMeta(
                status=int(cols["status"][i]),
                reason_code=int(cols["reason_code"][i]),
                reason=reasons[vids.start + i],
                num_frames=int(cols["num_frames"][i]),
                decoded_frames=int(cols["decoded_frames"][i]),
                fps=float(cols["fps"][i]),
                height=int(cols["height"][i]),
                width=int(cols["width"][i]),
            )
            for i in range(len(vids))
        ]
        rows = slice(vids.start * k, vids.stop * k)
        dst.write_shard(s, emb, src.group["crops/boxes"][rows], src.group["crops/flip"][rows], metas)
    return Path(out)


__all__ = [
    "HEAD_FORMAT",
    "MODE_NAME",
    "HeadConfig",
    "PairMaps",
    "SticaConfig",
    "SticaResult",
    "TemporalHead",
    "View",
    "ViewConfig",
    "default_view_config",
    "embed_maps",
    "export_embeddings",
    "feature_crop",
    "is_stica_checkpoint",
    "load_head",
    "n_loss_terms",
    "pair_mask",
    "sample_views",
    "train_stica",
    "train_step",
    "video_embeddings",
    "within_video_loss",
]
