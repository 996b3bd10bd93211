"""CVRL pretraining (Qian et al., "Spatiotemporal Contrastive Video Representation Learning").

Two clips per video, their start gap drawn from a decreasing density (Sec. 3.3, Appendix A), each with
its own temporally consistent spatial augmentation (Algorithm 1); backbone + projection head (3 hidden
layers of Linear, BN, ReLU, then a Linear to 128: Sec. 3.2, Table 6); InfoNCE with temperature 0.1 over
the 2N clips of the batch, both views in one forward pass so that batch-norm statistics cover all 2N clips;
SGD with momentum 0.9, linear warm-up then half-cosine learning rate (Sec. 4.1). Synchronised batch
norm and negatives gathered across ranks make several processes equal one with the whole batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vcache.models import VideoBackbone, build_backbone
from vcache.pretrain.augment import AugSettings, cvrl_settings, draw_aug
from vcache.pretrain.data import ClipDataset, GlobalBatchSampler, ViewPlan, make_loader
from vcache.pretrain.loop import (
    TrainProgress,
    cosine_schedule,
    finish_run,
    finite_or_raise,
    graceful_stop,
    param_groups,
    resume_state,
    save_state,
    state_path,
    stop_here,
)
from vcache.pretrain.losses import info_nce
from vcache.runtime.distributed import DistContext, all_gather_grad, convert_batchnorm, mean_over_ranks

__all__ = ["PRESETS", "CVRLConfig", "ProjectionHead", "clip_starts", "sample_interval", "train_cvrl"]

INTERVAL_DISTS = ("decreasing", "uniform", "increasing")


def sample_interval(rng: np.random.Generator, d: int, dist: str = "decreasing") -> int:
    """The gap t in [0, d) between the two clips' starts, d = the number of valid start positions.

    Inverse-CDF sampling of the paper's power densities (Appendix A, Fig. 3) in closed form instead of
    Algorithm 2's binary search: decreasing P(t) ∝ 1 - t/d gives t = floor(d (1 - sqrt(1 - u))) (the
    paper's best, linear), uniform t = floor(d u), increasing P(t) ∝ t/d gives t = floor(d sqrt(u)).
    """
    if d < 1:
        raise ValueError("need at least one start position")
    u = rng.random()
    if dist == "decreasing":
        x = d * (1 - math.sqrt(1 - u))
    elif dist == "uniform":
        x = d * u
    elif dist == "increasing":
        x = d * math.sqrt(u)
    else:
        raise ValueError(f"unknown interval distribution {dist!r}; choose from {', '.join(INTERVAL_DISTS)}")
    return min(int(x), d - 1)


def clip_starts(
    rng: np.random.Generator, n_frames: int, span: int, dist: str = "decreasing"
) -> tuple[int, int]:
    """Start frames of the two clips of a video of ``n_frames`` whose clips cover ``span`` frames.

    The gap t comes from :func:`sample_interval`; the earlier clip starts uniformly in the positions that
    leave room for the later one (Sec. 3.3), and a coin decides which of the two is the first view (the
    official code's random swap). A video shorter than a clip: both starts uniform (frames then loop,
    as in the official code).
    """
    d = n_frames - span + 1
    if d < 1:
        return int(rng.integers(0, n_frames)), int(rng.integers(0, n_frames))
    t = sample_interval(rng, d, dist)
    first = int(rng.integers(0, d - t))
    a, b = first, first + t
    return (b, a) if rng.random() < 0.5 else (a, b)


@dataclass
class CVRLConfig:
    """Every setting of a CVRL run (recorded in the checkpoint)."""

    backbone: str = "cvrl_r3d_narrow"
    backbone_kwargs: dict = field(default_factory=dict)  # factory kwargs, e.g. feature_stages
    clip_frames: int | None = None  # default: the backbone's preprocessing
    frame_stride: int | None = None
    input_size: int | None = None
    batch_size: int = 16  # videos per step over all processes (2x clips)
    epochs: float = 10.0
    steps: int | None = None  # overrides epochs
    optimizer: str = "sgd"  # "sgd" (the paper) or "adamw"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-6
    warmup_epochs: float = 1.0
    temperature: float = 0.1
    head_hidden: int | None = None  # default: the backbone's feature dim (SimCLR / CVRL Sec. 3.2)
    head_layers: int = 3
    head_out: int = 128
    interval_dist: str = "decreasing"
    aug: AugSettings = field(default_factory=cvrl_settings)
    # Scales aug.jitter (SimCLR's colour-distortion strength; the official CVRL code uses 1.0). The cpu
    # preset's 0.5 is SimCLR's choice for 32-px CIFAR images: at 1.0 the synthetic digits often vanish.
    jitter_strength: float = 1.0
    per_frame_aug: bool = False
    workers: int = 2
    timeout_s: float = 300.0  # a video that decodes longer is skipped as unreadable
    seed: int = 0
    device: str = "auto"
    save_every: int = 200  # steps between training-state saves

    def to_dict(self) -> dict:
        d = asdict(self)
        d["aug"] = self.aug.to_dict()
        return d


# Paper scale (Sec. 4.1): R3D-50, 16 x 2 frames at 224 px, batch 1024, 800 epochs, lr 0.32, 5 warm-up
# epochs. Weight decay: the paper is silent; 1e-6 is SimCLR's. CPU: the narrow R3D on 64 px synthetic
# video, batch 16; AdamW because a few hundred SGD steps at batch 16 barely move (our measurement, docs).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        backbone="cvrl_r3d_50", batch_size=1024, epochs=800, lr=0.32, warmup_epochs=5, optimizer="sgd"
    ),
    "cpu": dict(
        backbone="cvrl_r3d_narrow",
        batch_size=16,
        epochs=6,
        lr=1e-3,
        weight_decay=1e-4,
        warmup_epochs=0.5,
        optimizer="adamw",
        jitter_strength=0.5,
    ),
}


class ProjectionHead(nn.Module):
    """``layers`` x (Linear, BatchNorm1d, ReLU), then Linear to ``out`` (CVRL Sec. 3.2, Table 6: 3 best)."""

    def __init__(self, dim: int, hidden: int, out: int = 128, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        for _ in range(layers):
            mods += [nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            dim = hidden
        mods.append(nn.Linear(dim, out))
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CVRLModel(nn.Module):
    """Backbone + projection head; one forward pass over both views (the DDP-wrapped unit)."""

    def __init__(self, backbone: VideoBackbone, head: ProjectionHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x)[0])


def build_model(cfg: CVRLConfig) -> CVRLModel:
    backbone = build_backbone(
        cfg.backbone,
        **cfg.backbone_kwargs,
        **{
            k: v
            for k, v in dict(
                clip_frames=cfg.clip_frames, frame_stride=cfg.frame_stride, input_size=cfg.input_size
            ).items()
            if v is not None
        },
    )
    dim = backbone.feature_dim
    return CVRLModel(
        backbone.drop_unused().train(),  # e.g. VideoResNet's fc: DDP needs a gradient for every parameter
        ProjectionHead(dim, cfg.head_hidden or dim, cfg.head_out, cfg.head_layers),
    )


def make_plan(cfg: CVRLConfig, frames: int, stride: int, size: int):
    """The per-video plan: two clips (interval sampling), each with one draw (or one per frame)."""
    span = (frames - 1) * stride + 1
    aug = replace(cfg.aug, jitter=tuple(j * cfg.jitter_strength for j in cfg.aug.jitter))

    def plan(rng: np.random.Generator, n: int, h: int, w: int) -> list[ViewPlan]:
        views = []
        for start in clip_starts(rng, n, span, cfg.interval_dist):
            idx = (start + np.arange(frames) * stride) % n  # loops on videos shorter than a clip
            k = frames if cfg.per_frame_aug else 1
            views.append(ViewPlan(idx, [draw_aug(rng, aug, h, w) for _ in range(k)], size))
        return views

    return plan


def train_cvrl(
    paths: list[str],
    out: str | Path,
    cfg: CVRLConfig,
    ctx: DistContext,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Pretrain ``cfg.backbone`` with CVRL on ``paths`` and write a vcache checkpoint at ``out``.

    The training state (model, head, optimizer, step) is saved beside it (``out.train``) every
    ``cfg.save_every`` steps and at the end; ``resume=True`` continues from it. Returns a summary.
    """
    out = Path(out)
    torch.manual_seed(cfg.seed)  # the same initial weights in every rank and rerun
    model = build_model(cfg)
    convert_batchnorm(model, ctx.device)
    model.to(ctx.device)
    pre = model.backbone.preprocessing
    frames, stride, size = pre.clip_frames, pre.frame_stride, pre.input_size

    sampler_probe = GlobalBatchSampler(len(paths), cfg.batch_size, 1, 0, ctx.rank, ctx.world, cfg.seed)
    spe = sampler_probe.steps_per_epoch
    total = cfg.steps if cfg.steps is not None else max(1, round(cfg.epochs * spe))
    warmup = round(cfg.warmup_epochs * spe)

    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r} (sgd or adamw)")
    lrs = cosine_schedule(cfg.lr, 0.0, total, warmup)

    start, losses = 0, []
    spath = state_path(out)
    st = resume_state(spath, resume, ctx)
    if st is not None:
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        start, losses = int(st["step"]), list(st["losses"])

    net: nn.Module = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
        )
    dataset = ClipDataset(paths, make_plan(cfg, frames, stride, size), pre, cfg.seed, cfg.timeout_s)
    sampler = GlobalBatchSampler(len(paths), cfg.batch_size, total, start, ctx.rank, ctx.world, cfg.seed)
    loader = make_loader(dataset, sampler, cfg.workers)

    def state(step: int) -> dict:
        return {
            "step": step,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "losses": losses,
            "config": cfg.to_dict(),
        }

    model.train()
    dtype = next(model.parameters()).dtype  # inputs follow the weights (float64 in the tests)
    bar = TrainProgress("cvrl", total, start, 2 * cfg.batch_size, progress and ctx.is_main)
    with bar, graceful_stop(ctx) as stop:
        for step, (v1, v2) in enumerate(loader, start=start):
            for g in opt.param_groups:
                g["lr"] = float(lrs[step])
            n = v1.shape[0]
            z = net(torch.cat([v1, v2]).to(ctx.device, dtype, non_blocking=True))
            z1, z2 = z[:n], z[n:]
            loss = info_nce(z1, z2, cfg.temperature, all_gather_grad(z1), all_gather_grad(z2), ctx.rank * n)
            finite_or_raise(loss, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(mean_over_ranks(float(loss.detach())))
            bar.update(losses[-1])
            if ctx.is_main and cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
                save_state(spath, state(step + 1))
            stop_here(stop, ctx, spath, partial(state, step + 1), step + 1, total)
        clips_per_s = bar.clips_per_s
    return finish_run(ctx, "cvrl", out, model.backbone, cfg, losses, total, clips_per_s, state(total))
