"""Per-crop embeddings from a trained STiCA head: the head loaded from its checkpoint, whole-map
embeddings, per-video means, and an ordinary feature store of embeddings that `vcache probe` evaluates."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vcache.learn.stica.head import TemporalHead
from vcache.learn.stica.train import MODE_NAME, SticaConfig, load_checkpoint
from vcache.runtime.devices import resolve_device
from vcache.store import DONE, FeatureStore, StoreError, VideoMeta, check_compatible, create_store, open_store


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
