"""Head-only STiCA (trunk frozen): one training step, the training loop over a map store, and the
head checkpoint (its format, writing and loading)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vcache.learn import checkpoints
from vcache.learn.checkpoints import atomic_save
from vcache.learn.stica.head import HeadConfig, TemporalHead
from vcache.learn.stica.loss import within_video_loss
from vcache.learn.stica.pairs import PairMaps
from vcache.learn.stica.views import ViewConfig, sample_views
from vcache.runtime.devices import resolve_device
from vcache.store import StoreError, check_compatible, store_provenance

HEAD_FORMAT = "vcache-stica-head-1"
MODE_NAME = "head-only STiCA (trunk frozen)"


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
    # AdamW (our choice, the optimiser of SCALE's official code) with lr 3e-4 and weight decay 0.05, our
    # values: neither paper nor official code gives them for this setting.
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
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, int]:
    """The loss of one batch of (L_1, L_2) maps (B, T', H', W', C): draw T_1 and T_2, crop, pool, project,
    eq. 6. Shared with `vcache.pretrain.stica`, where the maps come from the trainable trunk; there, under
    torchrun, ``gather`` concatenates every rank's embeddings (with gradient) and ``offset`` is this rank's
    first video in them (`rng` must draw the same views on every rank)."""
    thw = tuple(maps1.shape[1:4])
    v1, v2 = sample_views(views, thw, rng), sample_views(views, thw, rng)
    z1, z2 = head.views_forward(maps1, v1), head.views_forward(maps2, v2)
    all_z = (gather(z1), gather(z2)) if gather is not None else (None, None)
    small1, small2 = [v.small for v in v1], [v.small for v in v2]
    return within_video_loss(z1, z2, small1, small2, temperature, *all_z, offset=offset)


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
        atomic_save(
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


# -- checkpoints ----------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path) -> dict[str, Any]:
    return checkpoints.load_checkpoint(path, HEAD_FORMAT, "STiCA head")


def is_stica_checkpoint(path: str | Path) -> bool:
    """True for a file written by `train_stica` (what a probe's --aggregator hook can test)."""
    try:
        load_checkpoint(path)
    except Exception:  # missing file, foreign format, or one of torch.load's many error types
        return False
    return True
