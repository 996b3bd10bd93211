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
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vcache import scale
from vcache.devices import resolve_device
from vcache.scale import _atomic_save, check_compatible, store_provenance
from vcache.stica.head import HeadConfig, TemporalHead
from vcache.stica.loss import n_loss_terms, pair_mask, within_video_loss
from vcache.stica.pairs import PairMaps
from vcache.stica.views import View, ViewConfig, default_view_config, feature_crop, sample_views
from vcache.store import DONE, FeatureStore, StoreError, VideoMeta, create_store, open_store

HEAD_FORMAT = "vcache-stica-head-1"
MODE_NAME = "head-only STiCA (trunk frozen)"


# -- training -------------------------------------------------------------------------------------------
@dataclass
class SticaConfig:
    """Settings of head-only STiCA training; saved in the checkpoint."""

    in_dim: int
    views: ViewConfig = field(default_factory=ViewConfig)
    width: int = 512
    depth: int = 2
    heads: int = 4
    proj_dim: int = 256
    temperature: float = 0.5  # within-modal temperature (Sec. 6.1)
    # The paper trains trunk + head with SGD lr 0.64 at batch 512; for a head on frozen features we use
    # AdamW (our choice, as SCALE's official code) at these values.
    lr: float = 3e-4
    weight_decay: float = 0.05
    batch_size: int = 128  # videos a step (paper: 8 per GPU x 64 GPUs = 512)
    epochs: int = 100  # Sec. 4.2
    seed: int = 0

    def head_config(self) -> HeadConfig:
        return HeadConfig(
            in_dim=self.in_dim, width=self.width, depth=self.depth, heads=self.heads, proj_dim=self.proj_dim
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SticaConfig:
        d = dict(d)
        d["views"] = ViewConfig(**d["views"])
        return cls(**d)


@dataclass
class SticaResult:
    checkpoint: Path
    epochs_done: int
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    streamed: bool = False
    n_terms: int = 0


def train_step(
    head: TemporalHead,
    maps1: torch.Tensor,
    maps2: torch.Tensor,
    views: ViewConfig,
    temperature: float,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, int]:
    """The loss of one batch of (L_1, L_2) maps (B, T', H', W', C): draw T_1 and T_2, crop, pool, project,
    eq. 6. Shared with `vcache.pretrain_stica`, where the maps come from the trainable trunk."""
    thw = tuple(maps1.shape[1:4])
    v1, v2 = sample_views(views, thw, rng), sample_views(views, thw, rng)
    z1, z2 = head.views_forward(maps1, v1), head.views_forward(maps2, v2)
    return within_video_loss(z1, z2, [v.small for v in v1], [v.small for v in v2], temperature)


def _provenance(attrs: dict[str, Any], path: str | Path) -> dict[str, Any]:
    return {**store_provenance(attrs, path), "map_shape": attrs.get("map_shape")}


def train_stica(
    store_path: str | Path,
    cfg: SticaConfig,
    out: str | Path,
    *,
    resume: bool = False,
    device: str = "auto",
    memory_bytes: float = 4e9,
    progress: Callable[[dict[str, float]], None] | None = None,
    max_steps: int | None = None,
) -> SticaResult:
    """Train the pooling head on a pairs-mode map store; write `out` after every epoch.

    Randomness (pair choice, batch order, view positions) comes from generators seeded by (seed, epoch),
    so a run resumed from an epoch's checkpoint continues exactly like an uninterrupted one.
    `progress` gets {epoch, step, loss, videos_per_s} after every step; `max_steps` stops early (tests,
    benchmarks): the checkpoint then holds the last completed epoch only.
    """
    t_start = time.perf_counter()
    out = Path(out)
    data = PairMaps(store_path, memory_bytes)
    t, h, w, c = data.map_shape
    if c != cfg.in_dim:
        raise StoreError(f"{store_path}: maps have {c} channels, the config expects {cfg.in_dim}")
    cfg.views.check((t, h, w))
    dev = resolve_device(device)
    provenance = _provenance(data.store.attrs, store_path)

    torch.manual_seed(cfg.seed)
    head = TemporalHead(cfg.head_config()).to(dev)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, history = 0, []
    if resume and out.exists():
        ckpt = load_checkpoint(out)
        saved, now = ckpt["config"], cfg.to_dict()
        diff = [f.name for f in fields(cfg) if f.name != "epochs" and saved.get(f.name) != now[f.name]]
        if diff:
            raise ValueError(f"--resume: settings differ from the checkpoint's: {', '.join(diff)}")
        check_compatible(ckpt["provenance"], data.store.attrs, "the checkpoint's store", "the maps store")
        if ckpt["provenance"].get("manifest_hash") != data.store.attrs.get("manifest_hash"):
            raise StoreError("--resume: the checkpoint was trained on a different store (manifest differs)")
        head.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start_epoch, history = int(ckpt["epochs_done"]), list(ckpt["history"])

    steps, seen, t_train, n_terms = 0, 0, 0.0, cfg.views.n_terms
    for epoch in range(start_epoch, cfg.epochs):
        head.train()
        view_rng = np.random.default_rng([cfg.seed, epoch, 1])
        total, count = 0.0, 0
        for i, (a, b, _) in enumerate(data.batches(epoch, cfg.batch_size, cfg.seed)):
            t0 = time.perf_counter()
            ma = torch.from_numpy(a).to(dev).float()
            mb = torch.from_numpy(b).to(dev).float()
            loss, n_terms = train_step(head, ma, mb, cfg.views, cfg.temperature, view_rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            val = float(loss.detach())
            t_train += time.perf_counter() - t0
            total, count, seen, steps = total + val * len(a), count + len(a), seen + len(a), steps + 1
            if progress is not None:
                progress({"epoch": epoch, "step": i, "loss": val, "videos_per_s": seen / max(t_train, 1e-9)})
            if max_steps is not None and steps >= max_steps:
                break
        if max_steps is not None and steps >= max_steps:
            break
        history.append({"epoch": epoch + 1, "loss": total / max(count, 1)})
        _atomic_save(
            {
                "format": HEAD_FORMAT,
                "mode": MODE_NAME,
                "config": cfg.to_dict(),
                "model": head.state_dict(),
                "optimizer": opt.state_dict(),
                "epochs_done": epoch + 1,
                "history": history,
                "n_terms": n_terms,
                "provenance": provenance,
                "class_names": list(data.store.attrs.get("class_names") or []),
            },
            out,
        )
    return SticaResult(
        checkpoint=out,
        epochs_done=len(history),
        history=history,
        steps=steps,
        seconds=time.perf_counter() - t_start,
        streamed=not data.in_memory,
        n_terms=n_terms,
    )


# -- checkpoints and embeddings -------------------------------------------------------------------------
def load_checkpoint(path: str | Path) -> dict[str, Any]:
    return scale.load_checkpoint(path, HEAD_FORMAT, "STiCA head")


def is_stica_checkpoint(path: str | Path) -> bool:
    """True for a file written by `train_stica` (what a probe's --aggregator hook can test)."""
    try:
        load_checkpoint(path)
    except Exception:  # missing file, foreign format, or one of torch.load's many error types
        return False
    return True


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
