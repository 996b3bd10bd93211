"""SCALE (Spatio-temporal Crop Aggregation, Sec. 3.3 of the paper): a small transformer over sets of cached
clip features, trained self-supervised with masked clip modelling (MCM) and a set-level contrastive loss
(SET).

It reads a `train`-mode store (16 augmented crops per video) through `vcache.store.load_cache`, never video.
Everything the CLI does is here: `train_scale`, `load_aggregator`, the model and the store checks.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vcache.devices import resolve_device
from vcache.losses import mcm_loss, set_loss
from vcache.store import Cache, StoreError

CKPT_FORMAT = "vcache-scale-1"


# -- stores: provenance and compatibility ---------------------------------------------------------------
def store_provenance(attrs: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """What a result or checkpoint records about the store it came from."""
    return {
        "path": str(path) if path is not None else None,
        "backbone": attrs.get("backbone"),
        "sampling": attrs.get("sampling"),
        "manifest_hash": attrs.get("manifest_hash"),
        "n_videos": attrs.get("n_videos"),
        "crops_per_video": attrs.get("crops_per_video"),
        "feature_dim": attrs.get("feature_dim"),
    }


def _backbone_key(attrs: dict[str, Any]) -> dict[str, Any]:
    bb = attrs.get("backbone") or {}
    return {
        "name": bb.get("name"),
        "checkpoint_sha256": bb.get("checkpoint_sha256"),
        "preprocessing": bb.get("preprocessing"),
        "feature_dim": attrs.get("feature_dim", bb.get("feature_dim")),
    }


def check_compatible(
    a: dict[str, Any], b: dict[str, Any], a_name: str = "first", b_name: str = "second"
) -> None:
    """Raise StoreError unless two stores (or a store and a checkpoint's provenance) share backbone name,
    checkpoint hash, preprocessing and feature dim: features of different backbones must never be mixed."""
    ka, kb = _backbone_key(a), _backbone_key(b)
    for key in ka:
        if ka[key] != kb[key]:
            raise StoreError(
                f"{a_name} and {b_name} were made with different backbones: {key} {ka[key]!r} != {kb[key]!r}"
            )


# -- model ----------------------------------------------------------------------------------------------
@dataclass
class ScaleConfig:
    """Architecture and training settings. Defaults: the paper (Sec. 4.1, 4.3) and the official code."""

    feature_dim: int
    width: int = 256  # Table 10: 2 layers x 256 is the default
    depth: int = 2
    heads: int = 0  # 0: width // 64 (at least 1); the paper is silent, our choice
    ff_mult: int = 4  # feed-forward width = 4 x width, the usual transformer choice (paper silent)
    dropout: float = 0.0  # paper silent; 0 keeps training deterministic given the seed
    proj_dim: int = 256  # output dim of the contrastive heads (paper silent; our choice = width)
    k: int = 8  # clips per set (Table 11: 8 x 2)
    mask_ratio: float = 0.25  # Table 9
    temperature: float = 0.2  # official code
    use_mcm: bool = True  # Table 8
    use_set: bool = True
    lr: float = 3e-4  # official code, AdamW
    weight_decay: float = 0.05  # paper silent; a common AdamW value for small transformers
    batch_size: int = 512  # Sec. 4.1; capped by the number of videos
    epochs: int = 200  # Sec. 4.3 ablation setup (the main results use 500)
    seed: int = 0

    def n_heads(self) -> int:
        return self.heads if self.heads > 0 else max(1, self.width // 64)

    def n_masked(self) -> int:
        """Exactly this many clips are masked per set: max(1, round(ratio * K)), or 0 for ratio 0.

        The paper words masking as a per-clip chance; a fixed count gives every batch the same number of
        MCM terms (our choice, see the issue)."""
        return 0 if self.mask_ratio <= 0 else max(1, round(self.mask_ratio * self.k))


def mlp_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """SCALE's contrastive head: a 3-layer MLP without BatchNorm (Sec. 4.1); the caller normalises."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out_dim)
    )


class ScaleAggregator(nn.Module):
    """The predictor network: input projection + box MLP + learned MSK/CLS tokens + encoder-only transformer.

    forward(features (B, K, D), boxes (B, K, 6), mask (B, K) bool or None) -> (tokens (B, K, W), cls (B, W)).
    """

    def __init__(self, cfg: ScaleConfig):
        super().__init__()
        w = cfg.width
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.feature_dim, w)
        # Eq. 5: an MLP over the 6 normalised box numbers (t0, t1, y0, x0, y1, x1 from the store), added to
        # every token, masked ones included. Two layers: the paper says "MLP" without a depth.
        self.box_mlp = nn.Sequential(nn.Linear(6, w), nn.GELU(), nn.Linear(w, w))
        self.msk_token = nn.Parameter(torch.zeros(w))
        self.cls_token = nn.Parameter(torch.zeros(w))
        nn.init.normal_(self.msk_token, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)
        layer = nn.TransformerEncoderLayer(
            w,
            cfg.n_heads(),
            cfg.ff_mult * w,
            cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(w)  # pre-norm layers need a final norm (our choice of pre-norm)

    def forward(
        self, features: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.in_proj(features)
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.msk_token.to(x.dtype), x)
        x = x + self.box_mlp(boxes)
        # The CLS token carries no box: it summarises the whole set.
        cls = self.cls_token.expand(x.shape[0], 1, -1)
        y = self.norm(self.encoder(torch.cat([cls, x], dim=1)))
        return y[:, 1:], y[:, 0]


class ScaleSSL(nn.Module):
    """The aggregator plus the three contrastive heads used only for self-supervised training.

    pred_head maps predictor outputs and tgt_head maps original backbone features into the MCM space (the
    two MLPs theta_A, theta_B of eq. 1); cls_head maps both sets' CLS outputs into the SET space (shared by
    the two sets, whose roles are symmetric: our choice, the paper does not say).
    """

    def __init__(self, cfg: ScaleConfig):
        super().__init__()
        self.cfg = cfg
        self.aggregator = ScaleAggregator(cfg)
        self.pred_head = mlp_head(cfg.width, cfg.width, cfg.proj_dim)
        self.tgt_head = mlp_head(cfg.feature_dim, cfg.width, cfg.proj_dim)
        self.cls_head = mlp_head(cfg.width, cfg.width, cfg.proj_dim)

    def losses(
        self, feats: tuple[torch.Tensor, torch.Tensor], boxes: tuple[torch.Tensor, torch.Tensor], masks
    ) -> dict[str, torch.Tensor]:
        """feats/boxes/masks: one per set, (B, K, D) / (B, K, 6) / (B, K) bool. Returns total, mcm, set."""
        cfg = self.cfg
        tau = cfg.temperature
        mcm = feats[0].new_zeros(())
        cls_out = []
        for f, b, m in zip(feats, boxes, masks, strict=True):
            tokens, cls = self.aggregator(f, b, m)  # each set is its own sequence: no attention across sets
            cls_out.append(cls)
            if cfg.use_mcm:
                pred = F.normalize(self.pred_head(tokens), dim=-1)
                tgt = F.normalize(self.tgt_head(f), dim=-1)
                mcm = mcm + mcm_loss(pred, tgt, m, tau)  # eq. 6 sums the two sets' terms
        st = feats[0].new_zeros(())
        if cfg.use_set:
            z1, z2 = (F.normalize(self.cls_head(c), dim=-1) for c in cls_out)
            st = set_loss(z1, z2, tau)
        return {"total": mcm + st, "mcm": mcm, "set": st}  # eq. 8: unweighted sum


# -- sampling -------------------------------------------------------------------------------------------
def sample_sets(
    n_videos: int, n_crops: int, k: int, n_masked: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two disjoint random sets of k of each video's n_crops cached crops, and their masks.

    Returns idx1, idx2 (n_videos, k) crop indices and mask1, mask2 (n_videos, k) bool with exactly
    n_masked True per row."""
    perm = torch.rand(n_videos, n_crops, generator=generator).argsort(dim=1)
    idx1, idx2 = perm[:, :k], perm[:, k : 2 * k]
    masks = []
    for _ in range(2):
        order = torch.rand(n_videos, k, generator=generator).argsort(dim=1)
        masks.append(order < n_masked)
    return idx1, idx2, masks[0], masks[1]


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x: (B, N, C), idx: (B, k) -> (B, k, C)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# -- checkpoints ----------------------------------------------------------------------------------------
def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill never leaves a half-written checkpoint


def load_checkpoint(path: str | Path, fmt: str = CKPT_FORMAT, what: str = "SCALE") -> dict[str, Any]:
    """A stage-2 checkpoint dict whose "format" is `fmt` (SCALE aggregators; STiCA heads pass theirs)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such checkpoint")
    ckpt = torch.load(p, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise StoreError(f"{p}: not a vcache {what} checkpoint")
    return ckpt


def load_aggregator(path: str | Path) -> tuple[ScaleAggregator, dict[str, Any]]:
    """The trained predictor network (heads dropped) and the checkpoint's metadata (config, provenance)."""
    ckpt = load_checkpoint(path)
    cfg = ScaleConfig(**ckpt["config"])
    model = ScaleSSL(cfg)
    model.load_state_dict(ckpt["model"])
    model.aggregator.eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer")}
    return model.aggregator, meta


# -- training -------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    checkpoint: Path
    epochs_done: int
    history: list[dict[str, float]] = field(default_factory=list)
    samples_per_s: float = 0.0
    data_share: float = 0.0  # share of step time spent sampling and gathering the batch


class ShardStream:
    """A train store too large for memory, read a group of shards at a time (each group under `max_bytes`).

    Every epoch visits the groups in an order drawn from (seed, epoch) and shuffles videos within a group,
    so a batch's negatives come from one group (consecutive shards: a random slice of the videos).
    """

    def __init__(self, path: str | Path, max_bytes: float):
        from vcache.store import open_store

        st = open_store(path)
        self.path, self.attrs = Path(path), st.attrs
        per_shard = st.videos_per_shard * st.crops_per_video * (st.feature_dim + 6) * 4
        size = max(1, int(max_bytes // max(1, per_shard)))
        self.groups = [list(range(i, min(st.n_shards, i + size))) for i in range(0, st.n_shards, size)]
        self.n_videos = int((st.status() == 1).sum())
        self.crops_per_video, self.feature_dim = st.crops_per_video, st.feature_dim

    def blocks(self, epoch: int, seed: int) -> Iterator[Cache]:
        from vcache.store import load_cache

        order = np.random.default_rng([seed, epoch]).permutation(len(self.groups))
        for g in order:
            yield load_cache(self.path, shards=self.groups[g])


def train_scale(
    cache: Cache | ShardStream,
    cfg: ScaleConfig,
    out: str | Path,
    *,
    store_path: str | Path | None = None,
    resume: bool = False,
    device: str = "auto",
    progress: Callable[[dict[str, float]], None] | None = None,
    max_steps: int | None = None,
) -> TrainResult:
    """Train SCALE on a loaded cache (or a ShardStream) and write a checkpoint to `out` after every epoch.

    A loaded cache is moved to the device once (a stream, a group of shards at a time); each step samples
    two disjoint sets of K crops per video and exactly `cfg.n_masked()` masks per set. Sampling uses a
    generator seeded from (seed, epoch), so a run resumed from an epoch's checkpoint gives exactly the
    weights of an uninterrupted run.
    `progress` gets a dict (epoch, step, steps, loss, mcm, set, samples_per_s) after every step.
    `max_steps` stops early (benchmarks); the checkpoint then holds the last completed epoch only.
    """
    out = Path(out)
    if isinstance(cache, ShardStream):
        n, n_crops, d = cache.n_videos, cache.crops_per_video, cache.feature_dim
    else:
        n, n_crops, d = cache.features.shape
    if d != cfg.feature_dim:
        raise StoreError(f"store feature dim {d} != config feature dim {cfg.feature_dim}")
    if 2 * cfg.k > n_crops:
        raise StoreError(
            f"K={cfg.k}: two disjoint sets need {2 * cfg.k} crops per video, the store has {n_crops}"
        )
    if cfg.use_mcm and cfg.n_masked() == 0:
        raise ValueError("the MCM loss needs a mask ratio > 0")
    if not (cfg.use_mcm or cfg.use_set):
        raise ValueError("switch on at least one of the MCM and SET losses")
    if n < 2:
        raise StoreError("SCALE needs at least 2 videos (the other videos are the negatives)")
    dev = resolve_device(device)
    provenance = store_provenance(cache.attrs, store_path)

    torch.manual_seed(cfg.seed)
    model = ScaleSSL(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, history = 0, []
    if resume and out.exists():
        ckpt = load_checkpoint(out)
        saved = dict(ckpt["config"])
        now = asdict(cfg)
        diff = [f.name for f in fields(cfg) if f.name != "epochs" and saved.get(f.name) != now[f.name]]
        if diff:
            raise ValueError(f"--resume: settings differ from the checkpoint's: {', '.join(diff)}")
        check_compatible(ckpt["provenance"], cache.attrs, "the checkpoint's store", "the train store")
        if ckpt["provenance"].get("manifest_hash") != cache.attrs.get("manifest_hash"):
            raise StoreError(
                "--resume: the checkpoint was trained on a different store (manifest hash differs)"
            )
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start_epoch, history = int(ckpt["epochs_done"]), list(ckpt["history"])

    def blocks(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(cache, ShardStream):
            for c in cache.blocks(epoch, cfg.seed):
                yield torch.as_tensor(c.features, device=dev), torch.as_tensor(c.boxes, device=dev)
        else:
            yield whole

    if not isinstance(cache, ShardStream):
        whole = (torch.as_tensor(cache.features, device=dev), torch.as_tensor(cache.boxes, device=dev))
    bsz = min(cfg.batch_size, n)
    steps = math.ceil(n / bsz)
    n_masked = cfg.n_masked()
    done_steps, t_data, t_total, seen = 0, 0.0, 0.0, 0
    epoch = start_epoch
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        sums = {"total": 0.0, "mcm": 0.0, "set": 0.0}
        s = 0
        for feats, boxes in blocks(epoch):
            nb = len(feats)
            order = torch.randperm(nb, generator=gen)
            idx1, idx2, m1, m2 = sample_sets(nb, n_crops, cfg.k, n_masked, gen)
            for first in range(0, nb, bsz):
                t0 = time.perf_counter()
                vids = order[first : first + bsz]
                if len(vids) < 2:  # a lone video has no negatives for SET
                    continue
                vd = vids.to(dev)
                f_all, b_all = feats[vd], boxes[vd]
                i1, i2 = idx1[vids].to(dev), idx2[vids].to(dev)
                batch_f = (_gather(f_all, i1), _gather(f_all, i2))
                batch_b = (_gather(b_all, i1), _gather(b_all, i2))
                batch_m = (m1[vids].to(dev), m2[vids].to(dev))
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t1 = time.perf_counter()
                losses = model.losses(batch_f, batch_b, batch_m)
                opt.zero_grad(set_to_none=True)
                losses["total"].backward()
                opt.step()
                vals = {k: float(v.detach()) for k, v in losses.items()}  # float() syncs the device
                t2 = time.perf_counter()
                t_data += t1 - t0
                t_total += t2 - t0
                seen += len(vids)
                for key in sums:
                    sums[key] += vals[key] * len(vids)
                done_steps += 1
                s += 1
                if progress is not None:
                    progress(
                        {
                            "epoch": epoch,
                            "step": s - 1,
                            "steps": steps,
                            "loss": vals["total"],
                            "mcm": vals["mcm"],
                            "set": vals["set"],
                            "samples_per_s": seen / max(t_total, 1e-9),
                        }
                    )
                if max_steps is not None and done_steps >= max_steps:
                    break
            if max_steps is not None and done_steps >= max_steps:
                break
        if max_steps is not None and done_steps >= max_steps:
            break
        history.append({"epoch": epoch + 1, **{k: v / n for k, v in sums.items()}})
        _atomic_save(
            {
                "format": CKPT_FORMAT,
                "config": asdict(cfg),
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "epochs_done": epoch + 1,
                "history": history,
                "provenance": provenance,
                "class_names": list(cache.attrs.get("class_names") or []),
            },
            out,
        )
    return TrainResult(
        checkpoint=out,
        epochs_done=len(history),
        history=history,
        samples_per_s=seen / max(t_total, 1e-9),
        data_share=t_data / max(t_total, 1e-9),
    )


def encode_videos(
    aggregator: ScaleAggregator,
    features: np.ndarray,
    boxes: np.ndarray,
    device: str = "auto",
    batch: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Run a frozen aggregator over all of each video's clips in one sequence (test-time use, Sec. 4.1).

    Returns tokens (n, K, W) and cls (n, W) as float32 numpy arrays."""
    dev = resolve_device(device)
    aggregator = aggregator.to(dev).eval()
    toks, clss = [], []
    with torch.no_grad():
        for i in range(0, len(features), batch):
            f = torch.as_tensor(features[i : i + batch], device=dev)
            b = torch.as_tensor(boxes[i : i + batch], device=dev)
            t, c = aggregator(f, b)
            toks.append(t.cpu().numpy())
            clss.append(c.cpu().numpy())
    return np.concatenate(toks), np.concatenate(clss)
